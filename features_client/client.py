"""FeaturesClient: the service's API as Python calls returning NumPy arrays, with retries and batch splitting.

A 413 for a batch of several inputs splits it: into requests of the server's input limit when the answer names
it (remembered for later calls), else into halves, recursively; the answers are merged in input order. One input
that is too large (alone, or named by the 413's `index`) raises TooLarge. With skip_bad=True, the inputs the
server refuses one by one (a 422 or 413 naming the input, a 413 for it alone) are left out, listed in the
result's `failed`, and the rest is sent again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

import numpy as np

from features_client.errors import (
    FeaturesConnectionError,
    FeaturesHTTPError,
    FeaturesResponseError,
    TooLarge,
    Unavailable,
    Unprocessable,
)
from features_client.inputs import Entry, entries, request_body
from features_client.results import (
    NPZ,
    SAFETENSORS,
    FeaturesResult,
    SearchResult,
    features_part,
    merged_arrays,
    merged_metadata,
    search_part,
)
from features_client.transport import Transport

try:
    import safetensors.numpy  # noqa: F401 (only asked whether it is there)

    BINARY = SAFETENSORS
except ImportError:  # npz needs nothing beyond NumPy
    BINARY = NPZ


class FeaturesClient:
    """One feature service. Thread-safe: each thread gets its own connection pool (unless `session` is given).

    `timeout`: seconds, or (connect, read). `retries`: how many times a connection error, timeout, 429, 502, 503
    or 504 is retried, waiting `backoff` (first wait, longest wait; doubling, with jitter) or the server's
    Retry-After if longer (at most 30 s).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float | tuple[float, float] = (10, 300),
        retries: int = 8,
        session=None,
        *,
        backoff: tuple[float, float] = (0.25, 8.0),
    ):
        self._transport = Transport(url, api_key, timeout, retries, backoff, session)
        self.max_inputs: int | None = None  # learnt from a 413 that names the server's input limit

    @property
    def url(self) -> str:
        return self._transport.url

    def __enter__(self) -> FeaturesClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def __repr__(self) -> str:
        return f"FeaturesClient({self.url!r})"

    # ---- the catalogue and probes --------------------------------------------------------------------------------

    def health(self) -> dict:
        """GET /healthz: {"status": "ok"} as soon as the server runs, also while models load."""
        return self._transport.json("GET", "/healthz")

    def ready(self) -> bool:
        """Whether every model is loaded: GET /readyz once, True for 200, False for 503 (still loading or
        failed); FeaturesConnectionError when nothing answers."""
        try:
            return self._transport.call("GET", "/readyz", retry=False).status_code == 200
        except Unavailable:
            return False

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Poll /readyz until the service is ready (or `timeout` seconds pass: the last error is raised); its body."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._transport.json("GET", "/readyz", retry=False)
            except (Unavailable, FeaturesConnectionError):
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)

    def models(self) -> list[dict]:
        """GET /v1/models: one entry per model (name, sha256, precision, ready, provider, layers by level)."""
        return self._transport.json("GET", "/v1/models")["models"]

    def model(self, name: str) -> dict:
        """GET /v1/models/{name}: layers (shape, stride, receptive field, poolings), preprocessing, input, source."""
        return self._transport.json("GET", f"/v1/models/{quote(name, safe='')}")

    def labels(self, name: str) -> list[str]:
        """The class names in logit order (NotFound for a model without labels)."""
        return self._transport.json("GET", f"/v1/models/{quote(name, safe='')}/labels")["labels"]

    def request(self, method: str, path: str, **kwargs):
        """Any route, with the key and the retries: the requests.Response, whatever its status."""
        return self._transport.request(method, path, **kwargs)

    # ---- features and search -------------------------------------------------------------------------------------

    def features(
        self,
        images,
        model: str,
        *,
        levels: str | list[str] | None = None,
        layers: str | list[str] | None = None,
        pooling: str | list[str] = "avg",
        normalize: bool = False,
        dtype: str = "float32",
        top: int | None = None,
        binary: bool = True,
        names: list[str] | None = None,
        skip_bad: bool = False,
    ) -> FeaturesResult:
        """The features of `images` at the layers asked for: `result.layer("embedding")` is [N, 1280].

        `images`: paths, bytes, binary files, https:// or data: URLs (fetched by the server), or float arrays
        [C, H, W] preprocessed as the model's catalogue says (sent as tensors), in any mix. `levels`/`layers`,
        `pooling` (avg, max, none, or several: "avg,max"), `normalize`, `dtype` and `top` are the service's
        options (docs/api.md). `binary` asks for a safetensors (or npz) answer instead of JSON: the same result,
        less to parse. Raises the FeaturesHTTPError of the first refusal, its `index` naming the input.
        """
        options = {
            "levels": levels,
            "layers": layers,
            "pooling": pooling if isinstance(pooling, str) else ",".join(pooling),
            "normalize": True if normalize else None,
            "dtype": dtype,
            "top": top,
            "encoding": "base64",  # for JSON answers: exact and compact; binary answers ignore it
        }
        headers = {"Accept": BINARY} if binary else {"Accept": "application/json"}
        path = f"/v1/models/{quote(model, safe='')}/features"
        parts, failed = self._batch(path, entries(images, names), options, headers, features_part, skip_bad)
        return FeaturesResult(
            merged_arrays([arrays for _, _, arrays in parts]),
            merged_metadata([(positions, metadata) for positions, metadata, _ in parts]),
            np.asarray([p for positions, _, _ in parts for p in positions], dtype=np.int64),
            failed,
        )

    def search(
        self,
        images,
        model: str,
        *,
        levels: str | list[str] | None = None,
        layers: str | list[str] | None = None,
        pooling: str = "avg",
        k: int = 10,
        names: list[str] | None = None,
        skip_bad: bool = False,
    ) -> SearchResult:
        """The `k` nearest indexed images of each input, per indexed layer (the server needs FEATURES_INDEX)."""
        options = {"levels": levels, "layers": layers, "pooling": pooling, "k": k}
        path = f"/v1/models/{quote(model, safe='')}/search"

        parts, failed = self._batch(path, entries(images, names), options, {}, search_part, skip_bad)
        return SearchResult(
            [found for _, _, answer in parts for found in answer],
            merged_metadata([(positions, metadata) for positions, metadata, _ in parts]),
            np.asarray([p for positions, _, _ in parts for p in positions], dtype=np.int64),
            failed,
        )

    # ---- one call, as many requests as the server's limits need ----------------------------------------------------

    def _batch(self, path: str, items: list[Entry], options: dict, headers: dict, decode: Callable, skip_bad: bool):
        """[(positions, metadata, payload)] in input order, and {position: error} of the inputs left out."""
        if not items:
            raise ValueError("no images given; send at least one")
        parts: list[tuple[list[int], dict, object]] = []
        failed: dict[int, FeaturesHTTPError] = {}
        batch = list(enumerate(items))
        for piece in _pieces(batch, self.max_inputs or len(batch)):
            self._send(path, piece, options, headers, decode, skip_bad, parts, failed)
        return parts, failed

    def _send(self, path, batch, options, headers, decode, skip_bad, parts, failed) -> None:
        """Post `batch` ([(position, entry)]) until it is answered, split or used up; answers go to `parts`."""
        while batch:
            body = request_body([entry for _, entry in batch], options)
            try:
                response = self._transport.call("POST", path, headers=headers, **body)
            except (TooLarge, Unprocessable) as error:
                index = _index(error, batch)
                if index is None and len(batch) == 1:
                    index = 0
                if index is not None:  # one input refused: raised, or left out and the rest sent again
                    self._refused(error, batch, index, skip_bad, failed)
                    batch = batch[:index] + batch[index + 1 :]
                    continue
                if isinstance(error, Unprocessable) and not skip_bad:
                    raise
                for piece in self._split(error, batch):
                    self._send(path, piece, options, headers, decode, skip_bad, parts, failed)
                return
            except FeaturesHTTPError as error:
                index = _index(error, batch)
                error.index = None if index is None else batch[index][0]
                raise
            metadata, payload = decode(response)
            positions = [position for position, _ in batch]
            if len(metadata.get("results", [])) != len(positions):
                raise FeaturesResponseError(f"{len(positions)} inputs sent, {len(metadata.get('results', []))} results")
            parts.append((positions, metadata, payload))
            return

    def _split(self, error: FeaturesHTTPError, batch: list) -> list[list]:
        """A refused batch in pieces: of the server's input limit when a 413 names it (kept for later calls), else
        halves (a byte limit, or a 422 that names no input: halving finds it)."""
        limit = error.limit if isinstance(error, TooLarge) else None
        if isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit < len(batch):
            self.max_inputs = min(self.max_inputs or limit, limit)
            return _pieces(batch, limit)
        return _pieces(batch, (len(batch) + 1) // 2)

    @staticmethod
    def _refused(error: FeaturesHTTPError, batch, index: int, skip_bad: bool, failed: dict) -> None:
        """One input the server will not take: raised with its position, or kept in `failed` with skip_bad."""
        error.index = batch[index][0]
        if not skip_bad:
            raise error
        failed[error.index] = error


def _pieces(batch: list, size: int) -> list[list]:
    return [batch[start : start + size] for start in range(0, len(batch), size)]


def _index(error: FeaturesHTTPError, batch: list) -> int | None:
    """The input a refusal names (its `index` fact), as a place in the request's batch; None if it names none."""
    index = error.facts.get("index")
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(batch):
        return index
    return None
