"""The one rule both tiers share: `integration` means "starts real processes".

tests/unit/ needs no real model and no server (a tiny ONNX model built in the test, the Flask test client, tiny
torch models for the automatic layer choice);
tests/integration/ holds the session export of the pretrained EfficientNet-Lite0 and the real servers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ is marked `integration`, so `pytest -m "not integration"` runs the unit
    tier alone."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
