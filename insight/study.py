"""The invariance study: per layer, how similar an image's pooled embedding stays under each transform,
measured against how similar two different images already are at that layer.

Cosine similarity of average-pooled embeddings (the layer's `avg` output; vector layers as they are):
- same  = mean over photos and a kind's views of cos(plain view, transformed view)
- diff  = mean over pairs of different photos of cos(plain, plain)
- gap   = same - diff, and score = gap / (1 - diff): 1 when the transform changes nothing, 0 when it moves the
  embedding as far as swapping the photo for another one would (on average), below 0 further than that.
The score matters because post-ReLU embeddings are all positive: raw cosines of unrelated images sit far
above zero, and by a different amount at every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from engine.errors import InvalidInput
from engine.exports import open_export
from engine.features import output_name
from engine.manifest import Manifest
from engine.runtime import OrtRuntime
from engine.settings import Settings
from insight.photos import Photo, load_photo
from insight.views import KINDS, PLAIN, View, context_image, view_tensor

DIGITS = 6


class StudyError(InvalidInput):
    """The study cannot run with these arguments; the message is the one line to print."""


@dataclass
class Model:
    manifest: Manifest
    runtime: OrtRuntime


def open_model(settings: Settings, name: str) -> Model:
    """The exported model `name` in settings.models_dir, checked against its sha256 (UnknownName, Misconfigured
    as engine.exports says), on the settings' providers and ONNX Runtime threads (0: its default)."""
    manifest, path = open_export(settings.models_dir, name)
    runtime = OrtRuntime(path, settings.provider_list, settings.ort_threads, manifest.onnx.dynamic_batch)
    return Model(manifest, runtime)


def embeddings(model: Model, tensors: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({layer: [N, D] pooled embeddings}, {spatial layer: [N, C*H*W] flattened maps}) for a batch of inputs."""
    layers = model.manifest.layers
    spatial = [layer for layer in layers if layer.spatial]
    names = [output_name(layer, "avg") for layer in layers] + [layer.outputs["none"] for layer in spatial]
    outputs = model.runtime.run(list(dict.fromkeys(names)), tensors.astype(np.float32))
    by_name = dict(zip(dict.fromkeys(names), outputs, strict=True))
    count = len(tensors)
    pooled = {layer.name: by_name[output_name(layer, "avg")].reshape(count, -1) for layer in layers}
    maps = {layer.name: by_name[layer.outputs["none"]].reshape(count, -1) for layer in spatial}
    return pooled, maps


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    dot = np.sum(a * b, axis=1)
    return dot / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def _figures(plain: list[np.ndarray], transformed: dict[str, list[np.ndarray]], views: tuple[View, ...],
             kinds: list[str]) -> tuple[float, dict[str, dict]]:  # fmt: skip
    """(different-photo baseline, {kind: similarity, similarity_min, gap, score}) for one layer and one measure."""
    base = np.stack(plain)
    pairs = list(combinations(range(len(base)), 2))
    diff = float(np.mean(_cosine(base[[i for i, _ in pairs]], base[[j for _, j in pairs]])))
    figures = {}
    for kind in kinds:
        same = np.concatenate([_cosine(base, np.stack(transformed[view.label])) for view in views if view.kind == kind])
        gap = float(same.mean()) - diff
        figures[kind] = {
            "similarity": _round(same.mean()),
            "similarity_min": _round(same.min()),
            "gap": _round(gap),
            "score": _round(gap / (1.0 - diff)) if diff < 1.0 else None,
        }
    return diff, figures


def run_study(model: Model, photos: list[Photo], views: tuple[View, ...]) -> dict:
    """Every figure of the study as one JSON-ready dict (layers in depth order)."""
    if len(photos) < 2:
        raise StudyError("the study needs at least 2 photos (the baseline compares different photos)")
    manifest = model.manifest
    preprocess = manifest.preprocess
    # measure -> layer -> plain embeddings per photo / view label -> embeddings per photo
    plain = {"pooled": {}, "map": {}}
    transformed = {"pooled": {}, "map": {}}
    for photo in photos:
        context = context_image(load_photo(photo), preprocess)
        batch = np.stack([view_tensor(context, view, preprocess) for view in (PLAIN, *views)])
        for measure, per_layer in zip(("pooled", "map"), embeddings(model, batch), strict=True):
            for layer, values in per_layer.items():
                plain[measure].setdefault(layer, []).append(values[0])
                for index, view in enumerate(views, start=1):
                    transformed[measure].setdefault(layer, {}).setdefault(view.label, []).append(values[index])
    kinds = [kind for kind in KINDS if any(view.kind == kind for view in views)]
    layers = []
    for layer in manifest.layers:
        diff, figures = _figures(plain["pooled"][layer.name], transformed["pooled"][layer.name], views, kinds)
        entry = {
            "name": layer.name,
            "level": layer.level,
            "shape": layer.shape,
            "stride": layer.stride,
            "receptive_field": layer.receptive_field,
            "different_images": _round(diff),
            "transforms": figures,
            "different_images_map": None,
        }
        if layer.spatial:
            map_diff, map_figures = _figures(plain["map"][layer.name], transformed["map"][layer.name], views, kinds)
            entry["different_images_map"] = _round(map_diff)
            for kind, figure in map_figures.items():
                figures[kind]["map"] = {"similarity": figure["similarity"], "score": figure["score"]}
        else:
            for figure in figures.values():
                figure["map"] = None
        layers.append(entry)
    return {
        "model": manifest.name,
        "sha256": manifest.onnx.sha256,
        "input_size": preprocess.size,
        "provider": model.runtime.provider,
        "photos": [{"name": p.name, "source": f"skimage.data.{p.name}", "licence": p.licence} for p in photos],
        "transforms": {kind: [view.label for view in views if view.kind == kind] for kind in kinds},
        "measure": {
            "pooled": "cosine similarity of the average-pooled embeddings (vector layers as they are)",
            "map": "cosine similarity of the whole flattened map, position by position (spatial layers only)",
            "score": "(same - different) / (1 - different): 1 = unchanged, 0 = as far as another photo",
        },
        "layers": layers,
    }
