"""gunicorn settings, all from FEATURES_* environment variables (engine/settings.py), and the reasoning.

- Buffering gthread workers (service/http_worker.py: each request is read whole in the event loop, with
  deadlines, before a thread sees it, so slow clients never hold a thread), 1 per machine by default: one
  process holds one copy of the model sessions (0.5 GB for EfficientNet-Lite0 with its sub-graphs); its
  threads decode requests while the micro-batcher thread runs ONNX Runtime, whose C++ code releases the GIL.
  So one worker keeps every core busy with no duplicated memory.
  More workers only pay when Python (JSON, request parsing) becomes the bottleneck: then set FEATURES_WORKERS,
  and ONNX Runtime's intra-op threads drop to cores / workers so the machine is never oversubscribed.
- 8 threads per worker: enough requests in flight to fill a micro-batch while others decode.
- On a GPU, 1 worker is right as well: one CUDA context and one copy of the weights, the batcher feeds it.
- No preload_app: ONNX Runtime sessions and their thread pools must be created after the fork, and the
  master must not even import onnxruntime (its import starts a native thread that fork() does not copy;
  engine/registry.py).
- Prometheus multiprocess mode: its directory is set and emptied in the master before any worker starts (a
  temporary one, removed on exit, when unset), and a dead worker's live gauges are dropped in child_exit.
- SIGHUP reloads the models in place, in every worker (engine/reload.py), instead of gunicorn's reload, which
  re-read this file and replaced the workers: the master forwards the signal to each worker (service/http_worker.py
  notes it, even during boot; post_worker_init follows it). Settings are not re-read: changing one needs a
  restart.
"""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from engine.errors import Misconfigured
from engine.registry import Registry
from engine.settings import METRICS_DIR_VARIABLE, Settings, SettingsError
from service.logs import TEXT_FORMAT, JsonFormatter

signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until gunicorn's handlers: a SIGHUP while starting must not end it
try:
    _settings = Settings.from_env()
except SettingsError as _exc:
    sys.exit(f"error: {_exc}")

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = "service.http_worker.BufferingWorker"  # gthread that buffers each request in its event loop
threads = _settings.threads
timeout = _settings.timeout
graceful_timeout = 30  # SIGTERM: stop accepting, let in-flight requests finish for up to 30 s
keepalive = 5
preload_app = False
control_socket_disable = True  # gunicorn's admin socket (~/.gunicorn/gunicorn.ctl): unused, and shared by instances
accesslog = None  # the app logs each request itself, with its request id (logger service.access)
errorlog = "-"
loglevel = _settings.log_level
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": JsonFormatter},
        "text": {"format": TEXT_FORMAT},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": _settings.log_format, "stream": "ext://sys.stderr"}
    },
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level.upper(), "handlers": ["console"], "propagate": False},
    },
}


def on_starting(server):
    """In the master, before any worker forks: check every manifest and checksum; prepare the metrics folder;
    take over SIGHUP."""
    server.handle_hup = lambda: _forward_hup(server)  # gunicorn's Arbiter looks handle_hup up on the instance
    try:
        Registry(_settings).check()
    except Misconfigured as exc:
        server.log.error("cannot start: %s", exc)
        sys.exit(1)
    folder = _settings.metrics_dir or Path(tempfile.mkdtemp(prefix="features-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # samples of a previous run would be added to this one's
        stale.unlink()
    os.environ[METRICS_DIR_VARIABLE] = str(folder)  # for prometheus_client and each worker's Settings
    server.log.info("metrics samples in %s", folder)


def on_exit(server):
    """The master stops, its workers gone: remove the metrics folder it made (each start made one in /tmp that
    no one removed); a configured PROMETHEUS_MULTIPROC_DIR is the operator's and stays."""
    made = os.environ.get(METRICS_DIR_VARIABLE) if _settings.metrics_dir is None else None  # set by on_starting
    if made:
        shutil.rmtree(made, ignore_errors=True)


def _forward_hup(server):
    server.log.info("SIGHUP: each worker reloads the models folder in place (a settings change needs a restart)")
    server.kill_workers(signal.SIGHUP)


def post_worker_init(worker):
    """In each worker, its app loaded: reload on every SIGHUP, one that came while it booted included; with several
    workers, the admin reload call signals the master so that the others follow (service/admin_routes.py)."""
    from service.admin_routes import MASTER_PID

    app = worker.wsgi
    requested = getattr(worker, "reload_requested", None)
    if requested is None:  # another worker class (--worker-class)
        worker.log.warning("worker class %s does not reload models in place: SIGHUP ends its workers, which the "
                           "master replaces", type(worker).__name__)  # fmt: skip
    else:
        app.extensions["reloader"].follow(requested)
    if worker.cfg.workers > 1:
        app.extensions[MASTER_PID] = worker.ppid


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
