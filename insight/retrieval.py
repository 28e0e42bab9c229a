"""What each level retrieves: the study's views put into the real vector index, and searched with their own
transformed views, layer by layer (average-pooled embeddings, cosine, engine.vector_index's EmbeddedIndex).

Two designs, both kept in retrieval.json:
- plain:     the database holds one plain view per photo; a query (a transformed view) hits when its nearest
             entry is its own photo ("does the layer still recognise the photo after the transform?").
- all_views: the database holds every view of every photo, the query's own entry included; the nearest entry
             other than the query itself (k=2) hits when it is a view of the same photo.
The plain design also gives each query a margin, (own − best other) / (1 − best other) with cosines to the plain
entries: > 0 exactly when it hits, 1 when the transform changes nothing; the invariance score's shape, with the
nearest other photo where the study has the average one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.features import output_name
from engine.vector_index import CollectionSpec, Neighbour, open_index
from insight.photos import Photo, load_photo
from insight.study import DIGITS, Model, StudyError
from insight.views import KINDS, PLAIN, View, context_image, view_tensor

POOLING = "avg"
DESIGNS = ("plain", "all_views")
CHOSEN = "plain"  # the informative one (docs/insight.md#retrieval): all_views is at 1.00 almost everywhere
SEPARATOR = " / "  # an entry's path: "<photo> / <view label>"


@dataclass(frozen=True)
class Entry:
    photo: str
    view: View

    @property
    def path(self) -> str:
        """The entry's name in the index (views are made in memory, so there is no file path)."""
        return f"{self.photo}{SEPARATOR}{self.view.label}"


def photo_of(path: str) -> str:
    return path.split(SEPARATOR, 1)[0]


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def embed_views(model: Model, photos: list[Photo], views: tuple[View, ...]) -> tuple[list[Entry], dict]:
    """([every view of every photo, plain first], {layer: [N, D] float32 average-pooled embeddings})."""
    manifest = model.manifest
    names = list(dict.fromkeys(output_name(layer, POOLING) for layer in manifest.layers))
    entries, chunks = [], {layer.name: [] for layer in manifest.layers}
    for photo in photos:
        context = context_image(load_photo(photo), manifest.preprocess)
        batch = np.stack([view_tensor(context, view, manifest.preprocess) for view in (PLAIN, *views)])
        by_name = dict(zip(names, model.runtime.run(names, batch.astype(np.float32)), strict=True))
        for layer in manifest.layers:
            chunks[layer.name].append(by_name[output_name(layer, POOLING)].reshape(len(batch), -1))
        entries += [Entry(photo.name, view) for view in (PLAIN, *views)]
    return entries, {name: np.concatenate(parts).astype(np.float32) for name, parts in chunks.items()}


def build_index(folder: Path, model: Model, entries: list[Entry], vectors: dict, rows: list[int]):
    """A real EmbeddedIndex in `folder` holding the entries at `rows`, every layer, through one writer."""
    manifest = model.manifest
    spec = CollectionSpec(manifest.name, manifest.onnx.sha256, POOLING,
                          {name: array.shape[1] for name, array in vectors.items()}, str(folder))  # fmt: skip
    index = open_index(str(folder))
    with index.writer(spec) as writer:
        writer.add([entries[row].path for row in rows], [""] * len(rows),
                   {name: array[rows] for name, array in vectors.items()})  # fmt: skip
    return index


def nearest_other(answers: list[Neighbour], own_path: str) -> Neighbour:
    """The best answer that is not the query's own entry (the index finds that one first, at cosine 1)."""
    return next(answer for answer in answers if answer.path != own_path)


def _margin(answers: list[Neighbour], photo: str) -> float:
    """(own − best other) / (1 − best other) over the plain entries; the search returned all of them."""
    own = max(answer.score for answer in answers if photo_of(answer.path) == photo)
    other = max(answer.score for answer in answers if photo_of(answer.path) != photo)
    return (own - other) / max(1.0 - other, 1e-12)


def _layer_figures(queries: list[Entry], found: list[Neighbour], margins: list[float] | None, kinds: list[str]) -> dict:
    """Hit rate per kind and overall (over queries, so a kind with more views weighs more), and every miss."""
    hits = [photo_of(neighbour.path) == query.photo for query, neighbour in zip(queries, found, strict=True)]
    figures = {}
    for kind in kinds:
        chosen = [i for i, query in enumerate(queries) if query.view.kind == kind]
        figure = {"hit_rate": _round(np.mean([hits[i] for i in chosen])), "hits": sum(hits[i] for i in chosen),
                  "queries": len(chosen)}  # fmt: skip
        if margins is not None:
            figure["margin"] = _round(np.mean([margins[i] for i in chosen]))
            figure["margin_min"] = _round(min(margins[i] for i in chosen))
        figures[kind] = figure
    misses = [{"query": query.path, "neighbour": neighbour.path, "score": _round(neighbour.score)}
              for query, neighbour, hit in zip(queries, found, hits, strict=True) if not hit]  # fmt: skip
    overall = {"overall": _round(np.mean(hits))}
    if margins is not None:
        overall["overall_margin"] = _round(np.mean(margins))
    return {**overall, "transforms": figures, "misses": misses}


def database_rows(design: str, entries: list[Entry]) -> list[int]:
    """The entries a design indexes: every view (all_views) or the plain view of each photo (plain)."""
    return [row for row, entry in enumerate(entries) if design == "all_views" or entry.view.kind == PLAIN.kind]


def search_design(design: str, folder: Path, model: Model, entries: list[Entry], vectors: dict) -> dict:
    """{layer: (queries, nearest other entry per query, the index's answers)} from the design's own real index;
    plain asks for every entry (for the margin), all_views for k=2 (the query itself and its neighbour)."""
    rows = database_rows(design, entries)
    query_rows = [row for row, entry in enumerate(entries) if entry.view.kind != PLAIN.kind]
    queries = [entries[row] for row in query_rows]
    k = len(rows) if design == "plain" else 2
    index = build_index(folder, model, entries, vectors, rows)
    found = {}
    try:
        for layer in model.manifest.layers:
            answers = index.search(model.manifest.name, POOLING, layer.name, vectors[layer.name][query_rows], k)
            nearest = [nearest_other(answer, query.path) for answer, query in zip(answers, queries, strict=True)]
            found[layer.name] = (queries, nearest, answers)
    finally:
        index.close()
    return found


def _design(design: str, folder: Path, model: Model, entries: list[Entry], vectors: dict, kinds: list[str]) -> dict:
    """One design's figures, layer by layer."""
    found = search_design(design, folder, model, entries, vectors)
    layers = []
    for layer in model.manifest.layers:
        queries, nearest, answers = found[layer.name]
        margins = None
        if design == "plain":
            margins = [_margin(answer, query.photo) for answer, query in zip(answers, queries, strict=True)]
        entry = {"name": layer.name, "level": layer.level, **_layer_figures(queries, nearest, margins, kinds)}
        if design == "all_views":
            entry.update(_all_views_shares(queries, nearest, answers))
        layers.append(entry)
    return {"database": len(database_rows(design, entries)), "queries": len(queries),
            "chance": _round(_chance(design, entries)), "layers": layers}  # fmt: skip


def _all_views_shares(queries: list[Entry], nearest: list[Neighbour], answers: list[list[Neighbour]]) -> dict:
    """How often the index put the query's own entry first (as it should), and how often the neighbour was the
    photo's plain view rather than a sibling transformed view (why this design is easy)."""
    plain = [Entry(query.photo, PLAIN).path for query in queries]
    return {"own_entry_first": _round(np.mean([a[0].path == q.path for a, q in zip(answers, queries, strict=True)])),
            "neighbour_plain": _round(np.mean([n.path == p for n, p in zip(nearest, plain, strict=True)]))}  # fmt: skip


def _chance(design: str, entries: list[Entry]) -> float:
    """The hit rate of a random answer: 1 / photos, or the other views of a photo among all other entries."""
    photos = len({entry.photo for entry in entries})
    if design == "plain":
        return 1.0 / photos
    per_photo = len(entries) // photos
    return (per_photo - 1) / (len(entries) - 1)


def run_retrieval(model: Model, photos: list[Photo], views: tuple[View, ...], folder: Path) -> dict:
    """Both designs' figures as one JSON-ready dict; the indexes are built under `folder` (a temporary one)."""
    if len(photos) < 2:
        raise StudyError("retrieval needs at least 2 photos (a hit must beat another photo)")
    manifest = model.manifest
    entries, vectors = embed_views(model, photos, views)
    kinds = [kind for kind in KINDS if any(view.kind == kind for view in views)]
    designs = {design: _design(design, folder / design, model, entries, vectors, kinds) for design in DESIGNS}
    return {
        "model": manifest.name,
        "sha256": manifest.onnx.sha256,
        "input_size": manifest.preprocess.size,
        "provider": model.runtime.provider,
        "photos": [{"name": p.name, "source": f"skimage.data.{p.name}", "licence": p.licence} for p in photos],
        "transforms": {kind: [view.label for view in views if view.kind == kind] for kind in kinds},
        "index": f"engine.vector_index EmbeddedIndex (USearch HNSW, cosine), {POOLING}-pooled embeddings",
        "designs": {design: {"about": ABOUT[design], **figures} for design, figures in designs.items()},
        "chosen": CHOSEN,
    }


ABOUT = {
    "plain": "database: the plain view of each photo; query: each transformed view; hit: its nearest entry is "
    "its own photo. margin: (own - best other) / (1 - best other), cosines to the plain entries",
    "all_views": "database: every view of every photo; query: each transformed view; hit: its nearest entry "
    "other than itself (k=2) is a view of the same photo",
}


def grid(result: dict, design: str) -> dict:
    """What the plot draws for one design, from the JSON alone: rows = kinds then overall, columns = layers."""
    layers = result["designs"][design]["layers"]
    kinds = list(result["transforms"])
    rates = [[layer["transforms"][kind]["hit_rate"] for layer in layers] for kind in kinds]
    overall = [layer["overall"] for layer in layers]
    table = {"rows": [*kinds, "overall"], "columns": [layer["name"] for layer in layers],
             "levels": [layer["level"] for layer in layers], "hit_rate": [*rates, overall]}  # fmt: skip
    if design == "plain":
        margins = [[layer["transforms"][kind]["margin"] for layer in layers] for kind in kinds]
        table["margin"] = [*margins, [layer["overall_margin"] for layer in layers]]
    return table


def read_invariance(path: Path, model: str, photos: list[Photo], views: tuple[View, ...]) -> dict:
    """The study's insight.json to compare with, refused unless it measured the same model, photos and views."""
    try:
        study = json.loads(Path(path).read_text())
        names, transforms = [photo["name"] for photo in study["photos"]], study["transforms"]
        scores = [layer["transforms"][kind]["score"] for layer in study["layers"] for kind in transforms]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StudyError(f"--invariance {path}: not a study's insight.json ({exc})") from None
    if not all(isinstance(score, int | float) for score in scores):
        raise StudyError(f"--invariance {path}: a layer has no invariance score to compare with")
    kinds = [kind for kind in KINDS if any(view.kind == kind for view in views)]
    wanted = {kind: [view.label for view in views if view.kind == kind] for kind in kinds}
    if study.get("model") != model or names != [photo.name for photo in photos] or transforms != wanted:
        found = f"{study.get('model')} on {len(names)} photos, {sum(map(len, transforms.values()))} views"
        raise StudyError(f"--invariance {path} measured {found}, this run is {model} on {len(photos)} photos, "
                         f"{len(views)} views; run the study with the same --model, --photos and --quick")  # fmt: skip
    return study


def versus_invariance(result: dict, study: dict) -> dict:
    """Every (layer, kind) cell with its invariance score beside its hit rates and margin, and their correlations
    across cells (Pearson; null where one side is constant)."""
    scores = {layer["name"]: layer["transforms"] for layer in study["layers"]}
    plain, every = (result["designs"][design]["layers"] for design in DESIGNS)
    cells = [
        {"layer": layer["name"], "kind": kind, "invariance": scores[layer["name"]][kind]["score"],
         "hit_rate": figure["hit_rate"], "margin": figure["margin"],
         "hit_rate_all_views": other["transforms"][kind]["hit_rate"]}
        for layer, other in zip(plain, every, strict=True) if layer["name"] in scores
        for kind, figure in layer["transforms"].items()
    ]  # fmt: skip
    invariance = [cell["invariance"] for cell in cells]
    return {
        "study_sha256": study.get("sha256"),
        "same_export": study.get("sha256") == result["sha256"],
        "correlation": {name: _pearson(invariance, [cell[name] for cell in cells]) for name in COMPARED},
        "cells": cells,
    }


COMPARED = ("hit_rate", "margin", "hit_rate_all_views")


def _pearson(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return _round(np.corrcoef(a, b)[0, 1])
