"""HTTP for search by level: neighbours of uploaded images per layer, the index's catalogue, entry pictures.

The index (FEATURES_INDEX: a folder or a postgresql:// URL) is written by batch extraction with --index; the
service only reads it, and sees a newer version of a collection on its next query.
"""

from __future__ import annotations

import io
import time

from flask import Blueprint, Response, current_app, request

from engine.errors import TooLarge, UnknownName
from engine.features import whole_number
from engine.files import UnreadableFile, read_bounded
from engine.images import decode_image
from engine.search import parse_search_options, search
from engine.vector_index import VectorIndex
from service import metrics
from service.request_steps import (
    decode,
    decode_budget,
    echoed_layers,
    json_response,
    read_inputs,
    ready_model,
    registry,
    served_by,
)

search_routes = Blueprint("search", __name__)
THUMBNAIL_DEFAULT, THUMBNAIL_MIN, THUMBNAIL_MAX = 256, 16, 1024


def vector_index() -> VectorIndex:
    """This worker's index (opened in create_app); 404 saying how to configure one when there is none."""
    index = current_app.extensions.get("index")
    if index is None:
        raise UnknownName("this service has no search index; set FEATURES_INDEX to a folder or a postgresql:// URL")
    return index


@search_routes.post("/v1/models/<model_name>/search")
def search_images(model_name: str):
    started = time.perf_counter()
    model = ready_model(model_name)
    index = vector_index()
    inputs, raw_options = read_inputs()
    options = parse_search_options(raw_options)
    with model.batcher.expecting():
        batch = decode(inputs, model)
        answer = search(model.batcher, model.manifest, batch, index, options)
    metrics.IMAGES.labels(model.name).inc(len(inputs))
    body = {
        **served_by(model),
        "index": {"collection": answer.collection.name, "entries": index.count(model.name, options.features.pooling)},
        "options": {**echoed_layers(options.features), "k": options.k},
        "results": [
            {
                "index": i,
                "name": item.name,
                "neighbours": {
                    level: {layer: [vars(n) for n in found] for layer, found in layers.items()}
                    for level, layers in result.items()
                },
            }
            for i, (item, result) in enumerate(zip(inputs, answer.results, strict=True))
        ],
        "timings_ms": {"total": round((time.perf_counter() - started) * 1e3, 3)},
    }
    return json_response(body)


@search_routes.get("/v1/index")
def index_catalogue():
    index = vector_index()
    served = {name: model.manifest.onnx.sha256 for name, model in registry().models.items()}
    return json_response(
        {
            "target": index.target,
            "collections": [
                {
                    "name": spec.name,
                    "model": spec.model,
                    "model_sha256": spec.model_sha256,
                    "pooling": spec.pooling,
                    "layers": [{"name": name, "size": size} for name, size in spec.layers.items()],
                    "entries": index.count(spec.model, spec.pooling),
                    "searchable": served.get(spec.model) == spec.model_sha256,  # the very model served here
                }
                for spec in index.collections()
            ],
        }
    )


@search_routes.get("/v1/index/entries/<int:entry_id>/image")
def entry_image(entry_id: int):
    """A JPEG thumbnail of an indexed image, so a page can show neighbours the client never uploaded."""
    size = whole_number(request.args.get("size", THUMBNAIL_DEFAULT), "size", THUMBNAIL_MIN, THUMBNAIL_MAX)
    path = vector_index().path_of(entry_id)
    if path is None:
        raise UnknownName(f"the index has no entry {entry_id}")
    settings = registry().settings
    image = decode_image(_read_file(path, settings.max_body_bytes), None, settings.max_pixels, decode_budget())
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Response(buffer.getvalue(), mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


def _read_file(path: str, limit: int) -> bytes:
    """An indexed file's bytes: a regular file within the upload limit (never a FIFO or a device to block on)."""
    try:
        return read_bounded(path, limit)
    except UnreadableFile:
        gone = f"the file of this entry ({path}) is gone or unreadable; rerun the extraction with --index to update it"
        raise UnknownName(gone) from None
    except TooLarge as exc:
        raise TooLarge(f"the file of this entry ({path}) is {exc.detail}", **exc.facts) from None
