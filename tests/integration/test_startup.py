"""Start-up failures under a real gunicorn: a bad export or a missing models folder stops the server with one clear
line (the registry's check runs in the master, before any worker forks)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.helpers import REPO, free_port


def test_checksum_mismatch_stops_the_server_with_one_line(models_dir, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(models_dir / "efficientnet_lite0", broken / "efficientnet_lite0")
    manifest_path = broken / "efficientnet_lite0" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    env = {
        "FEATURES_MODELS_DIR": str(broken),
        "FEATURES_HOST": "127.0.0.1",
        "FEATURES_PORT": str(free_port()),
        "PATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "service.app:create_app()"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "does not match its manifest" in errors[0], result.stderr


def test_missing_models_dir_stops_the_server(tmp_path):
    env = {"FEATURES_MODELS_DIR": str(tmp_path / "none"), "FEATURES_PORT": str(free_port()), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "service.app:create_app()"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "does not exist" in result.stderr
