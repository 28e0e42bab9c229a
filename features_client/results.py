"""Answers as objects: the features of a batch as NumPy arrays per (layer, pooling), the same whether the server
answered JSON (values or base64) or a binary body (safetensors or npz), and the neighbours of a search.

A batch the client split into several requests comes back as one result, in input order.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass

import numpy as np

from features_client.errors import FeaturesHTTPError, FeaturesResponseError

SAFETENSORS = "application/x-safetensors"
NPZ = "application/x-npz"
_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


@dataclass(frozen=True)
class TopClass:
    """One of an input's most probable classes (softmax of the model's logits)."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Neighbour:
    """An indexed image near the query at one layer: its entry id, its path where it was indexed, cosine score."""

    id: int
    path: str
    score: float


class FeaturesResult:
    """The features of a batch: `arrays["layer/pooling"]` is [N, *shape], row i the i-th input that succeeded.

    `metadata` is the server's answer without the arrays (model, sha256, precision, provider, options,
    results with each input's index, name and top classes, timings_ms) plus `tensors`: key -> layer, level and
    pooling. `indices` gives each row's position in the list sent; `failed` maps positions to the error of each
    input left out (only with skip_bad=True; otherwise a bad input raises).
    """

    def __init__(self, arrays: dict[str, np.ndarray], metadata: dict, indices: np.ndarray, failed: dict):
        self.arrays = arrays
        self.metadata = metadata
        self.indices = indices
        self.failed: dict[int, FeaturesHTTPError] = failed

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{key}: {list(array.shape)}" for key, array in self.arrays.items())
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return f"<FeaturesResult {self.model} {len(self)} inputs{failed}: {shapes}>"

    @property
    def model(self) -> str | None:
        return self.metadata.get("model")

    @property
    def sha256(self) -> str | None:
        return self.metadata.get("sha256")

    @property
    def precision(self) -> str | None:
        return self.metadata.get("precision")

    @property
    def provider(self) -> str | None:
        return self.metadata.get("provider")

    @property
    def options(self) -> dict:
        return self.metadata.get("options", {})

    @property
    def timings(self) -> dict[str, float]:
        """timings_ms of the server, summed over the requests a split batch took."""
        return self.metadata.get("timings_ms", {})

    @property
    def names(self) -> list[str | None]:
        """Each row's name as the server echoed it (a path's file name, or the names given)."""
        return [result.get("name") for result in self.metadata.get("results", [])]

    @property
    def tensors(self) -> dict[str, dict]:
        return self.metadata.get("tensors", {})

    @property
    def layers(self) -> list[str]:
        """The layers computed, in depth order."""
        return list(dict.fromkeys(info["layer"] for info in self.tensors.values()))

    @property
    def poolings(self) -> list[str]:
        return list(dict.fromkeys(info["pooling"] for info in self.tensors.values()))

    @property
    def top(self) -> list[list[TopClass]] | None:
        """Per row, the most probable classes, best first (asked for with top=k); None when not asked."""
        results = self.metadata.get("results", [])
        if not results or "top" not in results[0]:
            return None
        return [[TopClass(int(t["index"]), str(t["label"]), float(t["probability"])) for t in result["top"]]
                for result in results]  # fmt: skip

    def layer(self, name: str, pooling: str | None = None) -> np.ndarray:
        """One layer's array [N, *shape]; `pooling` may be left out when one pooling was asked for."""
        poolings = [info["pooling"] for info in self.tensors.values() if info["layer"] == name]
        if not poolings:
            raise KeyError(f"no layer {name!r} in this result; it holds {', '.join(self.layers) or 'no layers'}")
        if pooling is None:
            if len(poolings) > 1:
                raise KeyError(f"layer {name!r} was computed with poolings {', '.join(poolings)}; name one")
            pooling = poolings[0]
        key = f"{name}/{pooling}"
        if key not in self.arrays:
            raise KeyError(f"layer {name!r} was computed with pooling {', '.join(poolings)}, not {pooling!r}")
        return self.arrays[key]


class SearchResult:
    """The neighbours of each input that succeeded: `neighbours[i][layer]`, best first; `metadata` is the rest of
    the answer (model, sha256, index collection, options); `indices` and `failed` as in FeaturesResult."""

    def __init__(self, neighbours: list[dict[str, list[Neighbour]]], metadata: dict, indices: np.ndarray,
                 failed: dict):  # fmt: skip
        self.neighbours = neighbours
        self.metadata = metadata
        self.indices = indices
        self.failed: dict[int, FeaturesHTTPError] = failed

    def __len__(self) -> int:
        return len(self.neighbours)

    def layer(self, name: str) -> list[list[Neighbour]]:
        """One layer's neighbours, per row."""
        return [found[name] for found in self.neighbours]


# ---- decoding one answer -------------------------------------------------------------------------------------


def features_part(response) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of one feature answer, by its Content-Type: safetensors, npz or JSON."""
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    try:
        if kind == SAFETENSORS:
            return _ordered(*_from_safetensors(response.content))
        if kind == NPZ:
            return _ordered(*_from_npz(response.content))
        return _from_json(response.json())
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        kind = kind or "no Content-Type"
        raise FeaturesResponseError(f"a features answer ({kind}) could not be read: {exc!r}") from None


def _from_safetensors(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return json.loads(header["__metadata__"]["response"]), load(data)


def _from_npz(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return json.loads(str(arrays.pop("__response__")[()])), arrays


def _ordered(metadata: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """The feature arrays in the order the answer lists them (a binary file's own order is by name)."""
    return metadata, {key: arrays[key] for key in metadata["tensors"]}


def _from_json(body: dict) -> tuple[dict, dict[str, np.ndarray]]:
    pooling = body["options"]["pooling"]
    tensors: dict[str, dict] = {}
    parts: dict[str, list[np.ndarray]] = {}
    results = []
    for result in body["results"]:
        by_pooling = result["features_by_pooling"] if "features_by_pooling" in result else {pooling: result["features"]}
        for each_pooling, levels in by_pooling.items():
            for level, layers in levels.items():
                for layer, encoded in layers.items():
                    key = f"{layer}/{each_pooling}"
                    tensors.setdefault(key, {"layer": layer, "level": level, "pooling": each_pooling})
                    parts.setdefault(key, []).append(decode_array(encoded))
        results.append({k: v for k, v in result.items() if k not in ("features", "features_by_pooling")})
    return {**body, "results": results, "tensors": tensors}, {key: np.stack(p) for key, p in parts.items()}


def decode_array(encoded: dict) -> np.ndarray:
    """An EncodedArray ({shape, dtype, values} or {shape, dtype, data: base64 little-endian}) as a NumPy array."""
    dtype = _DTYPES[encoded["dtype"]]
    if "data" in encoded:
        array = np.frombuffer(base64.b64decode(encoded["data"]), dtype=dtype)
    else:
        array = np.asarray(encoded["values"], dtype=dtype)
    return array.reshape(encoded["shape"]).astype(dtype.newbyteorder("="), copy=False)


def search_part(response) -> tuple[dict, list[dict[str, list[Neighbour]]]]:
    """(metadata, per input {layer: neighbours}) of one search answer."""
    try:
        return _search(response.json())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FeaturesResponseError(f"a search answer could not be read: {exc}") from None


def _search(body: dict) -> tuple[dict, list[dict[str, list[Neighbour]]]]:
    found, results = [], []
    for result in body["results"]:
        found.append(
            {
                layer: [Neighbour(int(n["id"]), str(n["path"]), float(n["score"])) for n in neighbours]
                for layers in result["neighbours"].values()
                for layer, neighbours in layers.items()
            }
        )
        results.append({k: v for k, v in result.items() if k != "neighbours"})
    return {**body, "results": results}, found


# ---- one result of several answers -------------------------------------------------------------------------------


def merged_metadata(parts: list[tuple[list[int], dict]]) -> dict:
    """One answer's metadata for the requests of a split batch: results renumbered to positions in the list
    sent, timings summed; FeaturesResponseError if the model changed between them (a reload mid-call)."""
    if not parts:
        return {"results": []}
    first = parts[0][1]
    changed = {metadata.get("sha256") for _, metadata in parts} - {first.get("sha256")}
    if changed:
        raise FeaturesResponseError(
            f"model {first.get('model')} changed between the requests of one call (sha256 {first.get('sha256')} "
            f"then {changed.pop()}): the rows would not be comparable; call again"
        )
    timings: dict[str, float] = {}
    results = []
    for positions, metadata in parts:
        for name, value in (metadata.get("timings_ms") or {}).items():
            timings[name] = round(timings.get(name, 0.0) + value, 3)
        results += [{**result, "index": position} for position, result in zip(positions, metadata["results"],
                                                                                strict=True)]  # fmt: skip
    return {**first, "results": results, "timings_ms": timings}


def merged_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}
