"""The hand-written routes at their best: the simple gunicorn and thread settings a user would plausibly try.

The service's lead is only real against the fastest of these, not against one arbitrary setting: each app is
started under every configuration, timed at concurrency 8 on each photo set, and the fastest on the mixed set
is the baseline the benchmark reports.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench import load, servers

CONCURRENCY = 8
SMALL_SIDE = 640  # the photo set's small ones (300 to 640 px), as opposed to 1000 to 3000 px


@dataclass(frozen=True)
class Config:
    """gunicorn's worker class and workers, request threads per worker (gthread only) and the library's
    intra-op threads (0: the library's default)."""

    worker_class: str
    workers: int
    gthreads: int
    threads: int

    def describe(self) -> str:
        """As recorded in the results, e.g. "gthread 2 workers × 2 threads, 1 intra-op thread"."""
        requests = f" × {_count(self.gthreads, 'thread')}" if self.worker_class == "gthread" else ""
        threads = _count(self.threads, "intra-op thread") if self.threads else "default intra-op threads"
        return f"{self.worker_class} {_count(self.workers, 'worker')}{requests}, {threads}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def configs(cores: int, quick: bool = False) -> list[Config]:
    """What a user would try, in this order: the defaults, then the usual advice for workers and threads.

    `quick` (bench --quick, a check of the harness) leaves out the slowest to start: 2 x cores + 1 workers.
    """
    every = [
        Config("sync", 1, 1, 0),  # gunicorn's and the library's defaults
        Config("sync", cores, 1, 1),  # a worker per core, cores / workers library threads
        Config("sync", 2 * cores + 1, 1, 1),  # gunicorn's documented (2 × cores) + 1 workers
        Config("gthread", 1, 4, 0),  # one process, a few request threads, library defaults
        Config("gthread", cores, 2, 1),  # a worker per core, two requests in flight each
    ]
    return [config for config in every if not quick or config.workers != 2 * cores + 1]


def small_photos(images: list[bytes]) -> list[bytes]:
    """The photos of at most SMALL_SIDE pixels: where decoding is cheap, so serving overheads show most."""
    return [image for image in images if max(Image.open(io.BytesIO(image)).size) <= SMALL_SIDE]


def start(app: str, model_dir: Path, log: Path, config: Config) -> servers.Gunicorn:
    """`app` under `config`, once every worker has loaded it."""
    server = servers.baseline(
        app, model_dir, log, config.workers, config.threads, config.worker_class, config.gthreads
    ).wait_ready()
    try:
        settle(server, config.workers)
    except RuntimeError:
        server.stop()
        raise
    return server


def sweep(
    app: str, model_dir: Path, work: Path, photo_sets: dict[str, load.Bodies], seconds: float, quick: bool = False
) -> tuple[list[dict], Config]:
    """Every configuration at concurrency 8 on each photo set (one server start per configuration): rows of
    config, photos, rss_mib and wrk's summary, and the fastest configuration on photo_sets["mixed"]."""
    rows, mixed = [], {}
    for config in configs(len(os.sched_getaffinity(0)), quick):
        print(f"{app}: {config.describe()}…", flush=True)
        server = start(app, model_dir, work / f"{app}-sweep.log", config)
        try:
            for photos, bodies in photo_sets.items():
                summary = load.wrk(server.url, "/features", bodies, CONCURRENCY, seconds)
                rows.append({"config": config.describe(), "photos": photos, "rss_mib": server.rss_mib(), **summary})
                if photos == "mixed":
                    mixed[config] = summary["images_per_s"]
        finally:
            server.stop()
    return rows, max(mixed, key=mixed.get)


def settle(server: servers.Gunicorn, workers: int, timeout: float = 120) -> None:
    """Wait until all workers are up and idle: the server answers once one worker has loaded the app, and the
    others' loading (a second of CPU each, more for PyTorch) would otherwise eat into the first timed run."""
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        pids = [server.process.pid, *servers.worker_pids(server.process.pid)]
        used = sum(cpu_seconds(pid) for pid in pids)
        if len(pids) == workers + 1 and previous is not None and used - previous < 0.05:
            return
        previous = used
        time.sleep(0.5)
    raise RuntimeError(f"gunicorn's {workers} workers still busy after {timeout}s:\n{server.output()[-4000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (0 once it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
