"""Real gunicorn processes on 127.0.0.1 for the service and the baselines, and their memory (RSS)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """gunicorn with the given arguments and environment; `ready_path` answers 200 once it can serve."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.log = log
        environment = {**os.environ, **env, "FEATURES_HOST": "127.0.0.1", "FEATURES_PORT": str(self.port)}
        command = [sys.executable, "-m", "gunicorn", *args]
        if "-c" not in args:
            command[3:3] = ["--bind", f"127.0.0.1:{self.port}"]
        with log.open("w") as out:
            self.process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> Gunicorn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"gunicorn not ready in {timeout}s: {self.log.read_text()[-2000:]}")

    def rss_mib(self) -> float:
        """Resident memory of the master and every worker, in MiB."""
        return sum(_rss_kib(pid) for pid in [self.process.pid, *_children(self.process.pid)]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def service(models_dir: Path, log: Path, **env: str) -> Gunicorn:
    """The repo's service with its own gunicorn config (env overrides FEATURES_* settings)."""
    return Gunicorn(
        ["-c", "service/gunicorn.conf.py", "service.app:create_app()"],
        {"FEATURES_MODELS_DIR": str(models_dir), "FEATURES_LOG_LEVEL": "warning", **env},
        log,
        "/readyz",
    )


def baseline(app: str, model_dir: Path, log: Path, workers: int) -> Gunicorn:
    """A hand-written app with gunicorn's defaults (sync workers): one worker per core, cores / workers threads."""
    return Gunicorn(
        [f"bench.baselines.{app}:app", "--workers", str(workers), "--log-level", "warning"],
        {"BENCH_MODEL_DIR": str(model_dir), "BENCH_THREADS": str(max(1, _cores() // workers))},
        log,
        "/healthz",
    )
