"""Search by level, free of HTTP: an image's vectors at some layers, looked up among the indexed ones.

The query vectors are computed exactly as batch extraction computed the indexed ones (the same pooled graph
outputs), so an indexed image finds itself with a score of 1. The collection must come from the very model
that runs here (same sha256): vectors of another version of a model are not comparable, and saying so beats
answering with neighbours that mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import Conflict, InvalidInput, UnknownName
from engine.features import FeatureOptions, compute, parse_options, select_layers, whole_number
from engine.manifest import Layer, Manifest
from engine.vector_index import CollectionSpec, Neighbour, VectorIndex
from engine.vector_index.base import MAX_K

SEARCH_OPTIONS = ("levels", "layers", "pooling", "k")
DEFAULT_K = 10


@dataclass(frozen=True)
class SearchOptions:
    features: FeatureOptions  # levels, layers, pooling
    k: int = DEFAULT_K


def parse_search_options(raw: dict[str, object]) -> SearchOptions:
    """levels/layers/pooling as for features (pooling avg or max: the index holds vectors), and k."""
    unknown = sorted(set(raw) - set(SEARCH_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown option {unknown[0]!r}; search takes {', '.join(SEARCH_OPTIONS)}", valid=list(SEARCH_OPTIONS)
        )
    raw = {name: value for name, value in raw.items() if value is not None}
    k = whole_number(raw.pop("k", DEFAULT_K), "k", 1, MAX_K)
    features = parse_options(raw)
    if len(features.poolings) > 1:
        raise InvalidInput("search looks in one collection: give one pooling, avg or max", valid=["avg", "max"])
    if features.pooling == "none":
        raise InvalidInput("search compares vectors: pooling must be avg or max", valid=["avg", "max"])
    return SearchOptions(features, k)


def collection_for(index: VectorIndex, manifest: Manifest, pooling: str) -> CollectionSpec:
    """The collection of this model at this pooling; UnknownName lists what is indexed, Conflict a stale one."""
    spec = index.collection(manifest.name, pooling)
    if spec is None:
        valid = [f"{found.model} (pooling {found.pooling})" for found in index.collections()]
        raise UnknownName(
            f"the index holds no vectors of {manifest.name} at pooling {pooling}; add them with "
            f"python -m extract IMAGES --model {manifest.name} --pooling {pooling} --out DIR --index",
            valid=valid,
        )
    if spec.model_sha256 != manifest.onnx.sha256:
        raise Conflict(
            f"the index holds vectors of {manifest.name} sha256 {spec.model_sha256[:12]}…, but this service runs "
            f"sha256 {manifest.onnx.sha256[:12]}…: their vectors are not comparable; rerun the extraction "
            "with --index --overwrite"
        )
    return spec


def indexed_layers(manifest: Manifest, spec: CollectionSpec, options: FeatureOptions) -> list[Layer]:
    """The asked layers (or the layers at the asked levels) that the collection holds, in depth order."""
    layers = select_layers(manifest, options)  # UnknownName for a layer the model does not have
    indexed = list(spec.layers)
    if options.layers is not None:
        missing = [layer.name for layer in layers if layer.name not in spec.layers]
        if missing:
            raise UnknownName(
                f"layer {missing[0]!r} of {manifest.name} is not in the index; indexed: {', '.join(indexed)}",
                valid=indexed,
            )
        return layers
    chosen = [layer for layer in layers if layer.name in spec.layers]
    if not chosen:
        raise UnknownName(
            f"no indexed layer of {manifest.name} is at the levels {', '.join(options.levels)}; indexed: "
            f"{', '.join(indexed)}",
            valid=indexed,
        )
    return chosen


@dataclass(frozen=True)
class SearchAnswer:
    collection: CollectionSpec  # the collection searched
    results: list[dict[str, dict[str, list[Neighbour]]]]  # per input: {level: {layer: neighbours, best first}}


def search(runtime, manifest: Manifest, batch: np.ndarray, index: VectorIndex, options: SearchOptions) -> SearchAnswer:
    pooling = options.features.pooling
    spec = collection_for(index, manifest, pooling)
    layers = indexed_layers(manifest, spec, options.features)
    arrays = compute(runtime, layers, pooling, batch)
    results: list[dict[str, dict[str, list[Neighbour]]]] = [{} for _ in range(len(batch))]
    for layer, array in zip(layers, arrays, strict=True):
        found = index.search(manifest.name, pooling, layer.name, array.reshape(len(batch), -1), options.k)
        for result, neighbours in zip(results, found, strict=True):
            result.setdefault(layer.level, {})[layer.name] = neighbours
    return SearchAnswer(spec, results)
