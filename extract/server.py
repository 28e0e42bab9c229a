"""The --server engine: batches of image files posted to a running service, a few requests in flight.

The HTTP is features_client's (the package users call the service with): 503 (still loading) and connection
errors are retried with exponential backoff, a 413 (too many images or bytes for the server's limits) splits the
batch, and with skip_bad a 422 naming a bad image leaves it out, recorded here as failed, while the rest of the
batch is sent again, so one bad file never loses its neighbours. Answers come as safetensors: raw float32 bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from engine.errors import FeaturesError, UnknownName
from engine.manifest import Layer, load_manifest
from extract.errors import ExtractError, UsageError
from extract.extras import require
from extract.plan import ModelInfo, Plan
from extract.writers import BatchResult

fc = require("features_client", "--server")
DEFAULT_IN_FLIGHT = 4
RETRIES = 8  # backoff 0.25 s doubling to 8 s: about 30 s of patience with a restarting server
TIMEOUT = (10, 300)  # connect, read (a big batch on a busy CPU server can take a while)


class ServerClient:
    """One service through features_client, its errors turned into the extractor's (UsageError, ExtractError)."""

    def __init__(self, url: str, api_key: str | None = None, retries: int = RETRIES):
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--server {url!r} must be an http:// or https:// URL")
        self.client = fc.FeaturesClient(url, api_key, timeout=TIMEOUT, retries=retries)
        self.url = self.client.url
        self.provider: str | None = None  # the server's execution provider and its warnings, from the catalogue
        self.warnings: list[str] = []

    @contextmanager
    def reachable(self):
        """Connection errors and 503s that outlast the retries: the run cannot go on (ExtractError, exit 1)."""
        try:
            yield
        except fc.FeaturesConnectionError as exc:
            raise ExtractError(str(exc)) from None
        except fc.Unavailable as exc:
            raise ExtractError(f"{self.url} still answers {exc.status}: {exc.detail}") from None

    def request(self, method: str, path: str, **kwargs):
        """The response to the first try that is neither a 503 nor a connection error (extract.search uses it)."""
        with self.reachable():
            return self.client.request(method, path, **kwargs)

    def model_info(self, name: str, models_dir: Path) -> ModelInfo:
        """The model as the server describes it; model.json is the local manifest when it is the same export."""
        try:
            with self.reachable():
                catalogue = self.client.model(name)
        except (fc.Unauthorized, fc.Forbidden) as exc:
            raise UsageError(
                f"{self.url} refused the API key ({exc.detail}); "
                "give --api-key-file or set FEATURES_API_KEY or FEATURES_API_KEY_FILE"
            ) from None
        except fc.NotFound as exc:
            raise UnknownName(exc.detail) from None
        except fc.FeaturesHTTPError as exc:
            raise ExtractError(f"GET /v1/models/{name} answered {exc.status}: {exc.detail}") from None
        except fc.FeaturesResponseError:
            catalogue = None
        try:
            self.provider = catalogue.get("provider")
            self.warnings = [str(warning) for warning in catalogue.get("warnings") or []]
            for volatile in ("ready", "provider", "providers", "warnings"):  # the same export reads the same
                catalogue.pop(volatile, None)
            layers = [_catalogue_layer(entry) for entry in catalogue["layers"]]
            sha256 = str(catalogue["sha256"])
            precision = str(catalogue.get("precision", "fp32"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(f"{self.url} does not answer like the feature service (GET /v1/models/{name})") from None
        text = json.dumps(catalogue, indent=2) + "\n"
        local = Path(models_dir) / name / "model.json"
        try:
            if load_manifest(local).onnx.sha256 == sha256:
                text = local.read_text()
        except (OSError, FeaturesError):  # ManifestError (Misconfigured), whatever the reason
            pass  # no local copy of this export: the server's description stands in for the manifest
        return ModelInfo(name, sha256, layers, text, precision=precision)


class ServerEngine:
    """Reads files here, posts them in batches with `workers` requests in flight, reads float32 tensors back."""

    def __init__(self, plan: Plan, client: ServerClient, batch_size: int, workers: int | None = None):
        self.plan = plan
        self.client = client
        self.batch_size = batch_size
        self.workers = workers or DEFAULT_IN_FLIGHT
        self.options = {"layers": [layer.name for layer in plan.layers], "pooling": plan.pooling, "dtype": "float32"}
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ServerEngine:
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="extract-request")
        return self

    def __exit__(self, *exc_info) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    @property
    def provider(self) -> str | None:
        """The provider the server reported for this model (its GPU or CPU, not this machine's)."""
        return self.client.provider

    @property
    def warnings(self) -> list[str]:
        return self.client.warnings

    def batches(self, pending: list[int]) -> Iterator[BatchResult]:
        """Results as requests complete (any order; the writer places rows by position)."""
        chunks = iter([pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)])
        in_flight = set()
        while True:
            while len(in_flight) < self.workers and (chunk := next(chunks, None)) is not None:
                in_flight.add(self.pool.submit(self._chunk, chunk))
            if not in_flight:
                return
            finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()

    def _chunk(self, rows: list[int]) -> BatchResult:
        items, failed = [], []
        for row in rows:
            path = self.plan.sources[row]
            try:
                with open(path, "rb") as handle:
                    items.append((row, os.path.basename(path), handle.read()))
            except OSError as exc:
                failed.append((row, f"cannot read the file: {exc.strerror or exc}"))
        if not items:
            return BatchResult(np.zeros(0, dtype=np.int64), self._empty(), failed)
        result = self._send(items)
        for position, error in sorted(result.failed.items()):
            failed.append((items[position][0], _reason(error, items[position][1])))
        good = np.asarray([items[position][0] for position in result.indices], dtype=np.int64)
        if not len(good):
            return BatchResult(good, self._empty(), failed)
        arrays = [result.layer(layer.name, self.plan.pooling) for layer in self.plan.layers]
        return BatchResult(good, arrays, failed)

    def _send(self, items: list[tuple[int, str, bytes]]):
        """The features of `items`; the images the server refuses one by one come back in `failed`."""
        try:
            with self.client.reachable():
                return self.client.client.features(
                    [data for _, _, data in items],
                    self.plan.model.name,
                    names=[name for _, name, _ in items],
                    skip_bad=True,
                    **self.options,
                )
        except (fc.Unauthorized, fc.Forbidden) as exc:
            raise ExtractError(f"{self.client.url} refused the API key: {exc.detail}") from None
        except fc.FeaturesHTTPError as exc:
            raise ExtractError(f"{self.client.url} answered {exc.status}: {exc.detail}") from None
        except fc.FeaturesResponseError as exc:
            raise ExtractError(f"{self.client.url}: {exc}") from None

    def _empty(self) -> list[np.ndarray]:
        return [np.zeros((0, *layer.shape), dtype=np.float32) for layer in self.plan.layers]


def _reason(error, name: str) -> str:
    """failed.csv's words for an image the server refused."""
    if isinstance(error, fc.TooLarge):
        return f"the server refused it as too large: {error.detail}"
    return _strip_label(error.detail, error.facts.get("index"), name)


def _catalogue_layer(entry: dict) -> Layer:
    """A catalogue entry as a manifest Layer, so the service's own layer selection applies to it."""
    outputs = {pooling: entry["name"] for pooling in entry["pooling"]}
    name, level, shape = entry["name"], entry["level"], entry["shape"]
    return Layer(name, level, shape, entry.get("stride"), entry.get("receptive_field"), outputs)


def _strip_label(detail: str, index, name: str) -> str:
    """The service prefixes 'image 3 (a.jpg): ' (3 counting within its request); the failure list names the file."""
    for prefix in (f"image {index} ({name}): ", f"image {index}: "):
        if detail.startswith(prefix):
            return detail[len(prefix) :]
    return detail


def detail_of(response) -> str:
    """The detail of an error answer (problem+json, or the start of whatever else came back)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or f"HTTP {response.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail or f"HTTP {response.status_code}")
