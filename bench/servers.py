"""Real gunicorn processes on 127.0.0.1 for the service and the baselines, and their memory (RSS).

The one implementation: the benchmark starts its servers here, and the tests start theirs through it too.
"""

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
    """A TCP port nobody listens on at this moment, on 127.0.0.1."""
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
        """Poll `ready_path` until it answers 200; RuntimeError with the log's end if gunicorn exits or never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # not listening, or still loading (503)
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready in {timeout}s:\n{self.output()[-4000:]}")

    def output(self) -> str:
        """Everything gunicorn (master and workers) has logged so far."""
        return self.log.read_text()

    def rss_mib(self) -> float:
        """Resident memory of the master and every worker, in MiB."""
        return sum(rss_kib(pid) for pid in [self.process.pid, *worker_pids(self.process.pid)]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def worker_pids(master_pid: int) -> list[int]:
    """A gunicorn master's workers: its child processes (none once it has exited)."""
    try:
        return [int(p) for p in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()]
    except OSError:
        return []


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def service_command(models_dir: Path, *gunicorn_args: str, **env: str) -> tuple[list[str], dict[str, str]]:
    """gunicorn's arguments and environment for the repo's service with its own config: extra arguments (such as
    --workers) go before the app, `env` holds FEATURES_* settings."""
    args = ["-c", "service/gunicorn.conf.py", *gunicorn_args, "service.app:create_app()"]
    return args, {"FEATURES_MODELS_DIR": str(models_dir), **env}


def service(models_dir: Path, log: Path, **env: str) -> Gunicorn:
    """The repo's service as the benchmark runs it: warnings only in its log (env overrides FEATURES_* settings)."""
    return Gunicorn(*service_command(models_dir, **{"FEATURES_LOG_LEVEL": "warning", **env}), log, "/readyz")


def baseline(
    app: str,
    model_dir: Path,
    log: Path,
    workers: int,
    threads: int | None = None,
    worker_class: str = "sync",
    gthreads: int = 1,
) -> Gunicorn:
    """A hand-written app under gunicorn: `workers` processes of `worker_class` (sync, or gthread with `gthreads`
    request threads each; gunicorn itself turns sync into gthread when gthreads > 1), the library on `threads`
    intra-op threads (None: cores / workers; 0: the library's default)."""
    threads = max(1, _cores() // workers) if threads is None else threads
    gunicorn = ["--workers", str(workers), "--worker-class", worker_class, "--threads", str(gthreads)]
    return Gunicorn(
        [f"bench.baselines.{app}:app", *gunicorn, "--log-level", "warning"],
        {"BENCH_MODEL_DIR": str(model_dir), "BENCH_THREADS": str(threads)},
        log,
        "/healthz",
    )
