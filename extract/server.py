"""The --server engine: batches of image files posted to a running service, a few requests in flight.

503 (still loading) and connection errors are retried with exponential backoff. A 422 names the bad
image by index: it is recorded as failed and the rest of the batch is sent again, so one bad file never
loses its neighbours. A 413 (too many images or bytes for the server's limits) halves the batch.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from engine.errors import FeaturesError, UnknownName
from engine.manifest import Layer, load_manifest
from extract.errors import ExtractError, UsageError
from extract.extras import require
from extract.plan import ModelInfo, Plan
from extract.writers import BatchResult

requests = require("requests", "--server")
log = logging.getLogger(__name__)
DEFAULT_IN_FLIGHT = 4
RETRIES = 8  # backoff 0.25 s doubling to 8 s: about 32 s of patience with a restarting server
TIMEOUT = (10, 300)  # connect, read (a big batch on a busy CPU server can take a while)


class ServerClient:
    """HTTP to one service: API key, retries, problem+json turned into exceptions with the server's detail."""

    def __init__(self, url: str, api_key: str | None = None, retries: int = RETRIES):
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--server {url!r} must be an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.provider: str | None = None  # the server's execution provider and its warnings, from the catalogue
        self.warnings: list[str] = []
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):  # requests.Session is not shared across threads
            self._local.session = requests.Session()
        return self._local.session

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """The response to the first try that is neither a 503 nor a connection error."""
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                response = self._session().request(
                    method, self.url + path, headers=self.headers, timeout=TIMEOUT, **kwargs
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise ExtractError(f"cannot reach {self.url}: {exc}") from None
                wait_for = delay
            else:
                if response.status_code != 503:
                    return response
                if attempt == self.retries:
                    raise ExtractError(f"{self.url} still answers 503: {detail_of(response)}")
                wait_for = max(delay, _retry_after(response))
            log.info("retrying %s %s in %.2fs", method, path, wait_for)
            time.sleep(wait_for)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    def model_info(self, name: str, models_dir: Path) -> ModelInfo:
        """The model as the server describes it; model.json is the local manifest when it is the same export."""
        response = self.request("GET", f"/v1/models/{name}")
        if response.status_code in (401, 403):
            raise UsageError(
                f"{self.url} refused the API key ({detail_of(response)}); "
                "give --api-key-file or set FEATURES_API_KEY or FEATURES_API_KEY_FILE"
            )
        if response.status_code == 404:
            raise UnknownName(detail_of(response))
        if response.status_code != 200:
            raise ExtractError(f"GET /v1/models/{name} answered {response.status_code}: {detail_of(response)}")
        try:
            catalogue = response.json()
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
    """Reads files here, posts them in batches with `workers` requests in flight, parses base64 float32."""

    def __init__(self, plan: Plan, client: ServerClient, batch_size: int, workers: int | None = None):
        self.plan = plan
        self.client = client
        self.batch_size = batch_size
        self.workers = workers or DEFAULT_IN_FLIGHT
        self.limit = batch_size  # lowered when the server answers 413
        self.fields = {
            "encoding": "base64",
            "dtype": "float32",
            "pooling": plan.pooling,
            "layers": ",".join(layer.name for layer in plan.layers),
        }
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
        good: list[int] = []
        arrays: list[list[np.ndarray]] = [[] for _ in self.plan.layers]
        while items:
            batch, items = items[: self.limit], items[self.limit :]
            self._send(batch, good, arrays, failed)
        stacked = [
            np.stack(parts) if parts else np.zeros((0, *layer.shape))
            for parts, layer in zip(arrays, self.plan.layers, strict=True)
        ]
        return BatchResult(np.asarray(good, dtype=np.int64), stacked, failed)

    def _send(self, items, good: list[int], arrays: list[list[np.ndarray]], failed: list) -> None:
        """Post `items`; on 422 record the named image and resend the others; on 413 send halves."""
        while items:
            files = [("image", (name, data, "application/octet-stream")) for _, name, data in items]
            response = self.client.request(
                "POST", f"/v1/models/{self.plan.model.name}/features", files=files, data=self.fields
            )
            if response.status_code == 200:
                self._collect(response.json(), items, good, arrays)
                return
            problem = _problem(response)
            if response.status_code == 422:
                index = problem.get("index")
                if not isinstance(index, int) or not 0 <= index < len(items):
                    index = 0 if len(items) == 1 else None
                if index is None:  # a 422 that names no image: find it by halving
                    self._halves(items, good, arrays, failed)
                    return
                row, name, _ = items[index]
                failed.append((row, _strip_label(problem.get("detail", ""), index, name)))
                items = items[:index] + items[index + 1 :]
                continue
            if response.status_code == 413:
                if len(items) == 1:
                    failed.append((items[0][0], f"the server refused it as too large: {problem.get('detail', '')}"))
                    return
                self.limit = max(1, min(self.limit, len(items) // 2))
                self._halves(items, good, arrays, failed)
                return
            if response.status_code in (401, 403):
                raise ExtractError(f"{self.client.url} refused the API key: {problem.get('detail', '')}")
            raise ExtractError(f"{self.client.url} answered {response.status_code}: {problem.get('detail', '')}")

    def _halves(self, items, good, arrays, failed) -> None:
        middle = max(1, len(items) // 2)
        self._send(items[:middle], good, arrays, failed)
        self._send(items[middle:], good, arrays, failed)

    def _collect(self, body: dict, items, good: list[int], arrays: list[list[np.ndarray]]) -> None:
        for (row, _, _), result in zip(items, body["results"], strict=True):
            features = result["features"]
            for parts, layer in zip(arrays, self.plan.layers, strict=True):
                encoded = features[layer.level][layer.name]
                values = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f4")
                parts.append(values.reshape(encoded["shape"]))
            good.append(row)


def _catalogue_layer(entry: dict) -> Layer:
    """A catalogue entry as a manifest Layer, so the service's own layer selection applies to it."""
    outputs = {pooling: entry["name"] for pooling in entry["pooling"]}
    name, level, shape = entry["name"], entry["level"], entry["shape"]
    return Layer(name, level, shape, entry.get("stride"), entry.get("receptive_field"), outputs)


def _strip_label(detail: str, index: int, name: str) -> str:
    """The service prefixes 'image 3 (a.jpg): '; the failure list already names the file."""
    for prefix in (f"image {index} ({name}): ", f"image {index}: "):
        if detail.startswith(prefix):
            return detail[len(prefix) :]
    return detail


def _problem(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:200]}
    return body if isinstance(body, dict) else {"detail": str(body)[:200]}


def detail_of(response: requests.Response) -> str:
    return str(_problem(response).get("detail") or f"HTTP {response.status_code}")


def _retry_after(response: requests.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", 0)), 30.0)
    except ValueError:
        return 0.0
