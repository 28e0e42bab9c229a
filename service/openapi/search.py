"""Search by level over the index that batch extraction writes: its schemas and paths."""

from __future__ import annotations

from engine.manifest import LEVELS
from service.openapi.common import ERRORS, STRING, binary, ok, problem, ref
from service.openapi.options import SEARCH_OPTIONS, form, image_body, json_request, query_parameters
from service.openapi.schemas import OPTIONAL_NAME, SERVED_BY
from service.search_routes import THUMBNAIL_DEFAULT, THUMBNAIL_MAX, THUMBNAIL_MIN

_NEIGHBOURS = {"type": "array", "items": ref("Neighbour"), "description": "best first"}
SEARCH_SCHEMAS = {
    "Neighbour": {
        "type": "object",
        "required": ["id", "path", "score"],
        "properties": {
            "id": {"type": "integer", "description": "the entry; GET /v1/index/entries/{id}/image shows it"},
            "path": {"type": "string", "description": "the file as batch extraction listed it"},
            "score": {"type": "number", "description": "cosine similarity, 1 for the same direction"},
        },
    },
    "NeighboursByLayer": {"type": "object", "additionalProperties": _NEIGHBOURS, "description": "layer -> neighbours"},
    "NeighboursByLevel": {
        "type": "object",
        "properties": {level: ref("NeighboursByLayer") for level in LEVELS},
        "additionalProperties": False,
    },
    "SearchResult": {
        "type": "object",
        "required": ["index", "name", "neighbours"],
        "properties": {"index": {"type": "integer"}, "name": OPTIONAL_NAME, "neighbours": ref("NeighboursByLevel")},
    },
    "SearchOptions": {
        "type": "object",
        "required": ["levels", "layers", "pooling", "k"],
        "properties": {
            "levels": {"type": "array", "items": ref("Level")},
            "layers": {"type": ["array", "null"], "items": STRING},
            "pooling": STRING,
            "k": {"type": "integer"},
        },
    },
    "SearchedIndex": {
        "type": "object",
        "required": ["collection", "entries"],
        "properties": {"collection": STRING, "entries": {"type": "integer"}},
    },
    "SearchResponse": {
        "type": "object",
        "required": [*SERVED_BY, "index", "options", "results"],
        "properties": {
            **SERVED_BY,
            "index": ref("SearchedIndex"),
            "options": ref("SearchOptions"),
            "results": {"type": "array", "items": ref("SearchResult")},
            "timings_ms": ref("Timings"),
        },
    },
    "IndexedLayer": {
        "type": "object",
        "required": ["name", "size"],
        "properties": {"name": STRING, "size": {"type": "integer"}},
    },
    "Collection": {
        "type": "object",
        "required": ["name", "model", "model_sha256", "pooling", "layers", "entries", "searchable"],
        "properties": {
            "name": STRING,
            "model": STRING,
            "model_sha256": STRING,
            "pooling": {"enum": ["avg", "max"]},
            "layers": {"type": "array", "items": ref("IndexedLayer")},
            "entries": {"type": "integer"},
            "searchable": {"type": "boolean", "description": "built by the very model served here"},
        },
    },
    "IndexCatalogue": {
        "type": "object",
        "required": ["target", "collections"],
        "properties": {
            "target": {"type": "string", "description": "FEATURES_INDEX (a URL's password is never shown)"},
            "collections": {"type": "array", "items": ref("Collection")},
        },
    },
    "SearchForm": form(SEARCH_OPTIONS),
    "SearchJSONRequest": json_request(SEARCH_OPTIONS, "inputs and search options"),
}


def search_paths(model: dict) -> dict:
    """Search by level (service/search_routes.py) over the index that batch extraction writes."""
    entry = {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    size = {"type": "integer", "minimum": THUMBNAIL_MIN, "maximum": THUMBNAIL_MAX, "default": THUMBNAIL_DEFAULT,
            "description": "longest side"}  # fmt: skip
    not_found = problem("no index configured (FEATURES_INDEX), no such collection, layer or entry, or its file gone")
    return {
        "/v1/models/{model_name}/search": {
            "post": {
                "operationId": "search_images",
                "tags": ["search"],
                "summary": "nearest indexed images of each input, per layer: what each level finds alike",
                "parameters": [model, *query_parameters(SEARCH_OPTIONS)],
                "requestBody": image_body("SearchForm", "SearchJSONRequest"),
                "responses": {
                    "200": ok("SearchResponse", "neighbours per input, level and layer, best first"),
                    **ERRORS,
                    "404": not_found,
                    "409": problem("the index was built by another version of the model (other sha256)"),
                },
            }
        },
        "/v1/index": {
            "get": {
                "operationId": "get_index_catalogue",
                "tags": ["search"],
                "summary": "the index's collections: model, pooling, layers, entries",
                "responses": {"200": ok("IndexCatalogue", "collections"), "401": ERRORS["401"], "404": not_found},
            }
        },
        "/v1/index/entries/{entry_id}/image": {
            "get": {
                "operationId": "get_entry_image",
                "tags": ["search"],
                "summary": "a JPEG thumbnail of an indexed image",
                "parameters": [entry, {"name": "size", "in": "query", "required": False, "schema": size}],
                "responses": {
                    "200": binary("image/jpeg", "JPEG"),
                    "400": ERRORS["400"],
                    "401": ERRORS["401"],
                    "404": not_found,
                    "413": ERRORS["413"],
                    "422": ERRORS["422"],
                    "503": ERRORS["503"],
                },
            }
        },
    }
