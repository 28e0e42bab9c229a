"""gunicorn settings, all from FEATURES_* environment variables (service/settings.py).

gthread workers: inference releases the GIL inside ONNX Runtime, so threads of one worker overlap decoding
with inference; ONNX Runtime's intra-op threads are cores / workers so the machine is never oversubscribed.
No preload_app: sessions must be created after the fork.
"""

import sys

from service.registry import Registry, StartupError
from service.settings import Settings, SettingsError

try:
    _settings = Settings.from_env()
except SettingsError as _exc:
    sys.exit(f"error: {_exc}")

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = "gthread"
threads = _settings.threads
timeout = _settings.timeout
graceful_timeout = 30
keepalive = 5
preload_app = False
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level


def on_starting(server):
    """Check every manifest and checksum once, in the master, before any worker forks."""
    try:
        Registry(_settings).check()
    except StartupError as exc:
        server.log.error("cannot start: %s", exc)
        sys.exit(1)
