"""Prometheus metrics, correct under several gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets and empties it in the master before any worker
starts), each worker writes its samples to files there and /metrics merges every worker's files, so a scrape
that lands on any worker reports the whole server. Without it (tests, `flask run`) the process registry is used.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

REQUESTS = Counter("features_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "features_http_request_duration_seconds", "Time to answer a request", ["route"], buckets=_LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("features_http_requests_in_flight", "Requests being answered", multiprocess_mode="livesum")
REFUSED = Counter(
    "features_http_refused_total",
    "Requests refused by the worker before the app: header_timeout, body_timeout, send_timeout, too_large, malformed",
    ["reason"],
)
ERRORS = Counter("features_errors_total", "Problem responses by type", ["status", "type"])
IMAGES = Counter("features_images_total", "Inputs turned into features", ["model"])
BATCH_SIZE = Histogram(
    "features_inference_batch_images", "Images per ONNX Runtime run (micro-batching)", ["model"], buckets=_BATCH_BUCKETS
)
INFERENCE = Histogram("features_inference_seconds", "Time of one ONNX Runtime run", ["model"], buckets=_LATENCY_BUCKETS)
MODEL_RELOADS = Counter(
    "features_model_reloads_total",
    "What each reload did per model (engine/reload.py): unchanged, added, replaced, removed, failed",
    ["model", "result"],
)


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    """Label values must stay few whatever clients send: any other method name counts as OTHER."""
    return method if method in KNOWN_METHODS else "OTHER"


def batch_observer(model: str):
    """The micro-batcher's on_batch callback for one model."""
    batch_size, inference = BATCH_SIZE.labels(model), INFERENCE.labels(model)

    def observe(images: int, seconds: float) -> None:
        batch_size.observe(images)
        inference.observe(seconds)

    return observe


def model_reloaded(model: str, result: str) -> None:
    """The reloader's on_outcome callback: one count per model per reload."""
    MODEL_RELOADS.labels(model, result).inc()


def exposition(multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The text exposition of every worker's samples (multiprocess mode: Settings.metrics_dir) or of this process."""
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
