"""The integration tier: real processes on 127.0.0.1 (the exporter CLI, gunicorn, nginx, Chromium, Ray, wrk).

Every test under this folder is marked `integration` (tests/conftest.py), so `pytest -m "not integration"` skips
them. `Server` is bench/servers.py's gunicorn, started the way these tests configure the service; `run_cli` runs
the exporter as a user would. The session fixtures (one real export, one shared server) are in tests/conftest.py
while tests at the top level still use them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.servers import Gunicorn, service_command
from tests.helpers import REPO


class Server(Gunicorn):
    """A real gunicorn serving the app on 127.0.0.1, started with FEATURES_* variables as keyword arguments.

    Its log (info level: tests read it through `output()`) lies next to the models folder.
    """

    def __init__(self, models_dir: Path, *gunicorn_args: str, **env: str):
        handle, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log", dir=Path(models_dir).parent)
        os.close(handle)
        args, environment = service_command(models_dir, *gunicorn_args, **{"FEATURES_LOG_LEVEL": "info", **env})
        super().__init__(args, environment, Path(name), "/readyz")


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `python -m exporter ...` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
