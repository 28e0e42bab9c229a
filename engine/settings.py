"""One frozen Settings object built from FEATURES_* environment variables (documented in the README).

Nothing else reads FEATURES_* variables: the service (gunicorn.conf.py, create_app), batch extraction and the
study each build one at their entry point, and their command-line flags override its fields.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.errors import Misconfigured

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
PREFIX_CUTS = ("levels", "layers", "none")  # where engine/subgraphs.py cuts a model into sub-graphs
POOLED_GRAPHS = ("int8", "all", "off")  # which models also get a graph of their average-pooled outputs


class SettingsError(Misconfigured):
    """An environment variable with a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("exported_models")
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 1
    threads: int = 8
    providers: str = "cpu"  # cpu | cuda (CUDA first, CPU fallback)
    ort_threads: int = 0  # intra-op threads per session; 0 = cores / workers
    ort_spin: bool = False  # ONNX Runtime threads spin-wait between runs (see README: off measured faster here)
    prefix_graphs: str = "levels"  # sub-graphs cut where each level ends | after every layer | none
    pooled_graphs: str = "int8"  # models that also get a graph of their average-pooled outputs (engine/subgraphs.py)
    batch_images: int = 16  # micro-batcher: most images joined into one session.run
    batch_wait_ms: int = 0  # micro-batcher: longest wait for requests still decoding (0: join what is queued)
    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 32
    max_pixels: int = 40_000_000
    decode_budget_mb: int = 1024  # per worker: MB of image decoding at once (engine/decode_budget.py)
    decode_wait: int = 10  # seconds a decode may wait for budget before the client is told to retry (503)
    api_key: str | None = None
    admin_key: str | None = field(default=None, repr=False)  # POST /v1/admin/reload; unset: admin calls off
    index: str | None = None  # vector index for /search: a folder or a postgresql:// URL (engine/vector_index)
    # image URLs as inputs (service/remote_images.py): fetched at all, where else than public addresses, how long
    url_fetch: bool = True
    url_allow: tuple[str, ...] = ()  # CIDRs and host names allowed although private, loopback or link-local
    url_timeout_s: float = 10.0  # for all of one request's URLs, connect to last byte, redirects included
    timeout: int = 60
    # slow clients (service/http_worker.py): a request is read in the event loop and must arrive in time
    header_timeout: int = 10  # seconds for the request line and headers, from their first byte
    body_timeout: int = 20  # seconds for the body, plus one per body_min_rate bytes received
    body_min_rate: int = 65536  # bytes per second that earn a slow upload more time
    send_timeout: int = 30  # seconds a client may take to read a response before the connection is dropped
    log_level: str = "info"
    log_format: str = "json"  # json (one object per line) | text
    # prometheus_client's own variable: the folder where gunicorn workers share their samples (set by
    # service/gunicorn.conf.py before the fork); unset when the app runs in one process
    metrics_dir: Path | None = None

    @property
    def provider_list(self) -> list[str]:
        return PROVIDERS[self.providers]

    @property
    def intra_op_threads(self) -> int:
        """Threads per ONNX Runtime session, so that workers x threads never exceed the cores."""
        if self.ort_threads > 0:
            return self.ort_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.workers)

    def overridden(self, **fields) -> Settings:
        """These settings with the fields a command line gave (None: not given, keep the environment's)."""
        return replace(self, **{name: value for name, value in fields.items() if value is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def integer(name: str, default: int, minimum: int) -> int:
            raw = env.get(f"FEATURES_{name}")
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"FEATURES_{name}={raw!r} is not an integer") from None
            if value < minimum:
                raise SettingsError(f"FEATURES_{name}={value} must be at least {minimum}")
            return value

        return cls(
            models_dir=Path(env.get("FEATURES_MODELS_DIR", str(defaults.models_dir))),
            host=env.get("FEATURES_HOST", defaults.host),
            port=integer("PORT", defaults.port, 1),
            workers=integer("WORKERS", defaults.workers, 1),
            threads=integer("THREADS", defaults.threads, 1),
            providers=_choice(env, "PROVIDERS", defaults.providers, tuple(PROVIDERS)),
            ort_threads=integer("ORT_THREADS", defaults.ort_threads, 0),
            ort_spin=_choice(env, "ORT_SPIN", "on" if defaults.ort_spin else "off", ("on", "off")) == "on",
            pooled_graphs=_choice(env, "POOLED_GRAPHS", defaults.pooled_graphs, POOLED_GRAPHS),
            prefix_graphs=_choice(env, "PREFIX_GRAPHS", defaults.prefix_graphs, PREFIX_CUTS),
            batch_images=integer("BATCH_IMAGES", defaults.batch_images, 1),
            batch_wait_ms=integer("BATCH_WAIT_MS", defaults.batch_wait_ms, 0),
            max_body_bytes=integer("MAX_BODY_BYTES", defaults.max_body_bytes, 1024),
            max_images=integer("MAX_IMAGES", defaults.max_images, 1),
            max_pixels=integer("MAX_PIXELS", defaults.max_pixels, 1),
            decode_budget_mb=integer("DECODE_BUDGET_MB", defaults.decode_budget_mb, 1),
            decode_wait=integer("DECODE_WAIT", defaults.decode_wait, 0),
            api_key=_api_key(env),
            admin_key=_secret(env, "ADMIN_KEY"),
            index=env.get("FEATURES_INDEX") or None,
            url_fetch=_choice(env, "URL_FETCH", "on" if defaults.url_fetch else "off", ("on", "off")) == "on",
            url_allow=_url_allow(env.get("FEATURES_URL_ALLOW", "")),
            url_timeout_s=_seconds(env, "URL_TIMEOUT_S", defaults.url_timeout_s),
            timeout=integer("TIMEOUT", defaults.timeout, 1),
            header_timeout=integer("HEADER_TIMEOUT", defaults.header_timeout, 1),
            body_timeout=integer("BODY_TIMEOUT", defaults.body_timeout, 1),
            body_min_rate=integer("BODY_MIN_RATE", defaults.body_min_rate, 1),
            send_timeout=integer("SEND_TIMEOUT", defaults.send_timeout, 1),
            log_level=env.get("FEATURES_LOG_LEVEL", defaults.log_level).lower(),
            log_format=_choice(env, "LOG_FORMAT", defaults.log_format, ("json", "text")),
            metrics_dir=Path(env[METRICS_DIR_VARIABLE]) if env.get(METRICS_DIR_VARIABLE) else None,
        )


def _choice(env, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(f"FEATURES_{name}", default).strip().lower()
    if value not in choices:
        raise SettingsError(f"FEATURES_{name}={value!r}; use one of {', '.join(choices)}")
    return value


HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _seconds(env, name: str, default: float) -> float:
    raw = env.get(f"FEATURES_{name}")
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"FEATURES_{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"FEATURES_{name}={raw} must be a positive number of seconds")
    return value


def _url_allow(raw: str) -> tuple[str, ...]:
    """FEATURES_URL_ALLOW: a comma list of networks (CIDR, or one address) and host names, each normalised
    ("127.0.0.1" -> "127.0.0.1/32", "Images.Internal" -> "images.internal"); SettingsError names a bad entry."""
    allowed = []
    for entry in (part.strip().lower() for part in raw.split(",")):
        if not entry:
            continue
        try:
            allowed.append(str(ipaddress.ip_network(entry, strict=False)))
            continue
        except ValueError:
            pass
        if not HOST_NAME.fullmatch(entry.rstrip(".")) or re.fullmatch(r"[0-9./:]+", entry):
            raise SettingsError(
                f"FEATURES_URL_ALLOW entry {entry!r} is neither a network (e.g. 10.0.0.0/8, 127.0.0.1) nor a host name"
            )
        allowed.append(entry.rstrip("."))
    return tuple(allowed)


def _api_key(env) -> str | None:
    """FEATURES_API_KEY, or the key in the file named by FEATURES_API_KEY_FILE (Docker secrets)."""
    return _secret(env, "API_KEY")


def _secret(env, name: str) -> str | None:
    """FEATURES_<name>, or the key in the file named by FEATURES_<name>_FILE (Docker secrets)."""
    if env.get(f"FEATURES_{name}"):
        return env[f"FEATURES_{name}"]
    path = env.get(f"FEATURES_{name}_FILE")
    return read_api_key_file(path, f"FEATURES_{name}_FILE") if path else None


def read_api_key_file(path: str | os.PathLike, named: str) -> str:
    """The API key held in a file, stripped of surrounding whitespace: the one reader for FEATURES_API_KEY_FILE
    and the batch extractor's --api-key-file (`named` says which, for the error). SettingsError when the file
    cannot be read or is empty."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SettingsError(f"cannot read {named} {path}: {reason}") from None
    if not key:
        raise SettingsError(f"{named} {path} is empty")
    return key
