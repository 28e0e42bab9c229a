"""The OpenAPI 3.1 contract of the service; the tests validate every real response against it."""

from __future__ import annotations

from functools import cache

from engine.features import DTYPES, ENCODINGS
from engine.manifest import LEVELS, POOLINGS, PRECISIONS
from engine.search import DEFAULT_K
from engine.vector_index.base import MAX_K
from service.search_routes import THUMBNAIL_DEFAULT, THUMBNAIL_MAX, THUMBNAIL_MIN

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _ok(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_NAMES = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_OPTIONS = {
    "levels": {**_NAMES, "description": f"levels to return ({', '.join(LEVELS)}); default all"},
    "layers": {**_NAMES, "description": "layer names; overrides levels"},
    "pooling": {"enum": list(POOLINGS), "default": "avg", "description": "none returns full maps"},
    "normalize": {
        "oneOf": [{"type": "boolean"}, {"type": "string"}],
        "default": False,
        "description": "L2 per vector (per spatial position for full maps)",
    },
    "encoding": {"enum": list(ENCODINGS), "default": "json"},
    "dtype": {"enum": list(DTYPES), "default": "float32"},
}


def _nullable(schema: dict) -> dict:
    """A JSON-body option that may also be null, meaning its default (so echoed `options` can be sent back)."""
    keywords = {key: value for key, value in schema.items() if key in ("description", "default")}
    shape = {key: value for key, value in schema.items() if key not in keywords}
    return {"anyOf": [shape, {"type": "null"}], **keywords}


_JSON_OPTIONS = {name: _nullable(schema) for name, schema in _OPTIONS.items()}
_PRECISION = {"enum": list(PRECISIONS), "description": "of the export's weights and arithmetic (docs/precision.md)"}
# what every answer computed by a model says of it (service.request_steps.served_by)
_SERVED_BY = {"model": {"type": "string"}, "sha256": {"type": "string"}, "precision": _PRECISION,
              "provider": {"type": "string"}}  # fmt: skip

_SCHEMAS = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "request_id": {"type": "string"},
            "valid": {"type": "array", "items": {"type": "string"}},
            "index": {"type": "integer"},
            "limit": {"type": "integer"},
            "retry_after": {"type": "integer"},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "models"],
        "properties": {"status": {"const": "ready"}, "models": {"type": "array", "items": {"type": "string"}}},
    },
    "ModelSummary": {
        "type": "object",
        "required": ["name", "sha256", "precision", "ready", "provider", "levels"],
        "properties": {
            "name": {"type": "string"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "precision": _PRECISION,
            "ready": {"type": "boolean"},
            "provider": {"type": ["string", "null"]},
            "levels": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": _ref("ModelSummary")}},
    },
    "Layer": {
        "type": "object",
        "required": ["name", "level", "shape", "stride", "receptive_field", "pooling"],
        "properties": {
            "name": {"type": "string"},
            "level": {"enum": list(LEVELS)},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "stride": {"type": ["integer", "null"]},
            "receptive_field": {"type": ["integer", "null"]},
            "pooling": {"type": "array", "items": {"enum": list(POOLINGS)}},
            "global_context": {"type": "boolean"},
            "token_grid": {"type": "boolean"},
        },
    },
    "ModelDetail": {
        "allOf": [_ref("ModelSummary")],
        "type": "object",
        "required": ["providers", "warnings", "input", "preprocess", "layers", "source", "verification"],
        "properties": {
            "providers": {"type": "array", "items": {"type": "string"}},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "input": {"type": "object", "required": ["name", "shape", "layout", "dynamic_batch"]},
            "preprocess": {"type": "object", "required": ["size", "resize", "crop", "interpolation", "mean", "std"]},
            "layers": {"type": "array", "items": _ref("Layer")},
            "logits_layer": {"type": ["string", "null"]},
            "labels": {"type": "integer"},
            "source": {"type": "object"},
            "quality": {
                "type": ["object", "null"],
                "description": "int8/fp16: cosine to the fp32 export per layer and pooling, top-1 agreement, "
                "on held-out photos (docs/precision.md); null for fp32",
            },
            "verification": {"type": "object"},
        },
    },
    "EncodedArray": {
        "type": "object",
        "required": ["shape", "dtype"],
        "properties": {
            "shape": {"type": "array", "items": {"type": "integer"}},
            "dtype": {"enum": list(DTYPES)},
            "values": {"type": "array", "description": "nested lists of numbers, shaped like `shape`"},
            "data": {"type": "string", "contentEncoding": "base64", "description": "little-endian raw bytes"},
        },
        "oneOf": [{"required": ["values"]}, {"required": ["data"]}],
    },
    "FeaturesResponse": {
        "type": "object",
        "required": [*_SERVED_BY, "options", "results", "timings_ms"],
        "properties": {
            **_SERVED_BY,
            "options": {"type": "object"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "features"],
                    "properties": {
                        "index": {"type": "integer"},
                        "name": {"type": ["string", "null"]},
                        "features": {
                            "type": "object",
                            "propertyNames": {"enum": list(LEVELS)},
                            "additionalProperties": {"type": "object", "additionalProperties": _ref("EncodedArray")},
                        },
                    },
                },
            },
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "FeaturesJSONRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {"type": "string", "contentEncoding": "base64"},
                                "name": {"type": "string"},
                            },
                        },
                        {
                            "type": "object",
                            "required": ["tensor"],
                            "properties": {
                                "tensor": {
                                    "type": "object",
                                    "required": ["shape", "data"],
                                    "properties": {
                                        "shape": {"type": "array", "items": {"type": "integer"}},
                                        "dtype": {"enum": ["float32", "float16"]},
                                        "data": {"type": "string", "contentEncoding": "base64"},
                                    },
                                },
                                "name": {"type": "string"},
                            },
                        },
                    ]
                },
            },
            **_JSON_OPTIONS,
        },
        "additionalProperties": False,
    },
}

_ERRORS = {
    "400": _problem("bad option, malformed JSON or bad tensor"),
    "401": _problem("API key required"),
    "404": _problem("unknown model or layer (the problem lists valid names)"),
    "413": _problem(
        "body, number of inputs, form parts or an image's decoding memory above its limit (`limit` names it); "
        "the worker also answers 408 (request not received in time), 417 and 431 before the app sees a request"
    ),
    "415": _problem("unsupported Content-Type"),
    "422": _problem(
        "an image could not be decoded, is of an undocumented format, or makes the network overflow (the problem "
        "names its index)"
    ),
    "503": _problem("models failed to load, the worker is stopping, or decoding memory is busy (see Retry-After)"),
}


_LABELS = {
    "type": "object",
    "required": ["model", "layer", "labels"],
    "properties": {
        "model": {"type": "string"},
        "layer": {"type": ["string", "null"], "description": "the layer whose outputs the labels index"},
        "labels": {"type": "array", "items": {"type": "string"}},
    },
}
_PNG = {"image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}}


def _picture_paths(model: dict, raw: dict) -> dict:
    """Pictures of a layer, class labels and the page (service/picture_routes.py; sizes: engine/pictures.py)."""
    layer = {"name": "layer_name", "in": "path", "required": True, "schema": {"type": "string"}, "example": "stem"}
    maps_options = {
        "k": {"type": "integer", "minimum": 1, "maximum": 64, "default": 8, "description": "channels to draw"},
        "alpha": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.6, "description": "map opacity"},
    }
    query = [{"name": k, "in": "query", "required": False, "schema": v} for k, v in maps_options.items()]
    one_image = {
        "type": "array",
        "items": {"type": "string", "contentMediaType": "image/*"},
        "minItems": 1,
        "maxItems": 1,
    }
    inputs = {**_SCHEMAS["FeaturesJSONRequest"]["properties"]["inputs"], "maxItems": 1}
    multipart = {"type": "object", "required": ["image"], "properties": {"image": one_image, **maps_options}}
    json_body = {"type": "object", "required": ["inputs"], "properties": {"inputs": inputs, **maps_options}}
    errors = {code: _ERRORS[code] for code in ("400", "401", "404")}
    return {
        "/": {
            "get": {
                "summary": "the page: feature maps, receptive fields and top-5 classes of an image (no API key needed)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/v1/models/{model_name}/labels": {
            "get": {
                "summary": "class names, in the order of the logits layer's outputs",
                "parameters": [model],
                "responses": {"200": _ok("Labels", "labels"), "401": _ERRORS["401"], "404": _ERRORS["404"]},
            }
        },
        "/v1/models/{model_name}/layers/{layer_name}/filters.png": {
            "get": {
                "summary": "the first convolution's filters as a colour grid (400 for layers that do not see pixels)",
                "description": "Each filter is scaled by its own largest |weight| (zero weight = grey) and enlarged "
                "with nearest neighbour to s = max(1, 48 // kernel) pixels per weight, 8 filters per row, 2-pixel "
                "gaps: width = columns·(kw·s + 2) + 2, height = rows·(kh·s + 2) + 2; 402×202 for the 32 3×3 "
                "filters of EfficientNet-Lite0.",
                "parameters": [model, layer],
                "responses": {"200": {"description": "PNG", "content": _PNG}, **errors},
            }
        },
        "/v1/models/{model_name}/layers/{layer_name}/maps.png": {
            "post": {
                "summary": "the k strongest channels of one image's map at a layer, over the image, captioned",
                "description": "Channels with the highest mean activation, each stretched to its own min..max, "
                "upsampled bilinearly and drawn in viridis at opacity alpha over the preprocessed input in grey; "
                "the caption gives level, stride and receptive field. min(k, channels) tiles of the input size "
                "H×W, 4 per row, 4-pixel gaps, 40-pixel caption: width = columns·(W + 4) + 4, height = 40 + "
                "rows·(H + 4) + 4 (916×500 for k = 8 at 224 px). Same input forms as /features, one image only; "
                "vector layers have no map (400).",
                "parameters": [model, layer, *query],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": multipart},
                        "application/json": {"schema": json_body},
                        "image/jpeg": raw,
                        "image/png": raw,
                        "image/webp": raw,
                    },
                },
                "responses": {"200": {"description": "PNG", "content": _PNG}, **_ERRORS},
            }
        },
    }


_NEIGHBOURS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "path", "score"],
        "properties": {
            "id": {"type": "integer", "description": "the entry; GET /v1/index/entries/{id}/image shows it"},
            "path": {"type": "string", "description": "the file as batch extraction listed it"},
            "score": {"type": "number", "description": "cosine similarity, 1 for the same direction"},
        },
    },
}
_SEARCH_SCHEMAS = {
    "SearchResponse": {
        "type": "object",
        "required": [*_SERVED_BY, "index", "options", "results"],
        "properties": {
            **_SERVED_BY,
            "index": {
                "type": "object",
                "required": ["collection", "entries"],
                "properties": {"collection": {"type": "string"}, "entries": {"type": "integer"}},
            },
            "options": {"type": "object"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "name", "neighbours"],
                    "properties": {
                        "index": {"type": "integer"},
                        "name": {"type": ["string", "null"]},
                        "neighbours": {
                            "type": "object",
                            "propertyNames": {"enum": list(LEVELS)},
                            "additionalProperties": {"type": "object", "additionalProperties": _NEIGHBOURS},
                        },
                    },
                },
            },
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "IndexCatalogue": {
        "type": "object",
        "required": ["target", "collections"],
        "properties": {
            "target": {"type": "string", "description": "FEATURES_INDEX (a URL's password is never shown)"},
            "collections": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "model", "model_sha256", "pooling", "layers", "entries", "searchable"],
                    "properties": {
                        "name": {"type": "string"},
                        "model": {"type": "string"},
                        "model_sha256": {"type": "string"},
                        "pooling": {"enum": ["avg", "max"]},
                        "layers": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "size"],
                                "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
                            },
                        },
                        "entries": {"type": "integer"},
                        "searchable": {"type": "boolean", "description": "built by the very model served here"},
                    },
                },
            },
        },
    },
}


def _search_paths(model: dict, raw: dict) -> dict:
    """Search by level (service/search_routes.py) over the index that batch extraction writes."""
    options = {
        "levels": _OPTIONS["levels"],
        "layers": {**_NAMES, "description": "indexed layer names; overrides levels (default: every indexed layer)"},
        "pooling": {"enum": ["avg", "max"], "default": "avg", "description": "how maps became vectors"},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K, "description": "neighbours"},
    }
    query = [{"name": k, "in": "query", "required": False, "schema": v} for k, v in options.items()]
    multipart = {"type": "object", "required": ["image"], "properties": {**_MULTIPART_IMAGES, **options}}
    json_options = {name: _nullable(schema) for name, schema in options.items()}
    json_body = {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": _SCHEMAS["FeaturesJSONRequest"]["properties"]["inputs"], **json_options},
        "additionalProperties": False,
    }
    entry = {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    size = {"type": "integer", "minimum": THUMBNAIL_MIN, "maximum": THUMBNAIL_MAX, "default": THUMBNAIL_DEFAULT,
            "description": "longest side"}  # fmt: skip
    not_found = _problem("no index configured (FEATURES_INDEX), no such collection, layer or entry, or its file gone")
    return {
        "/v1/models/{model_name}/search": {
            "post": {
                "summary": "nearest indexed images of each input, per layer: what each level finds alike",
                "parameters": [model, *query],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": multipart},
                        "application/json": {"schema": json_body},
                        "image/jpeg": raw,
                        "image/png": raw,
                        "image/webp": raw,
                    },
                },
                "responses": {
                    "200": _ok("SearchResponse", "neighbours per input, level and layer, best first"),
                    **_ERRORS,
                    "404": not_found,
                    "409": _problem("the index was built by another version of the model (other sha256)"),
                },
            }
        },
        "/v1/index": {
            "get": {
                "summary": "the index's collections: model, pooling, layers, entries",
                "responses": {"200": _ok("IndexCatalogue", "collections"), "401": _ERRORS["401"], "404": not_found},
            }
        },
        "/v1/index/entries/{entry_id}/image": {
            "get": {
                "summary": "a JPEG thumbnail of an indexed image",
                "parameters": [entry, {"name": "size", "in": "query", "required": False, "schema": size}],
                "responses": {
                    "200": {"description": "JPEG", "content": {"image/jpeg": {"schema": {"type": "string"}}}},
                    "400": _ERRORS["400"],
                    "401": _ERRORS["401"],
                    "404": not_found,
                    "413": _ERRORS["413"],
                    "422": _ERRORS["422"],
                    "503": _ERRORS["503"],
                },
            }
        },
    }


_MULTIPART_IMAGES = {
    "image": {"type": "array", "minItems": 1, "items": {"type": "string", "contentMediaType": "image/*"}},
}


@cache
def openapi_document() -> dict:
    model = {
        "name": "model_name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": "efficientnet_lite0",
    }
    query = [{"name": k, "in": "query", "required": False, "schema": v} for k, v in _OPTIONS.items()]
    multipart = {
        "type": "object",
        "required": ["image"],
        "properties": {**_MULTIPART_IMAGES, **_OPTIONS},
    }
    raw = {"schema": {"type": "string", "contentMediaType": "image/*"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cnn-features",
            "version": "1.0.0",
            "description": "Low-, mid- and high-level CNN embeddings of images, layer by layer.",
        },
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": _ok("Health", "alive")}}},
            "/readyz": {
                "get": {
                    "summary": "readiness: every model loaded and warmed up",
                    "responses": {"200": _ok("Ready", "ready"), "503": _ERRORS["503"]},
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "the models served",
                    "responses": {"200": _ok("ModelList", "models"), "401": _ERRORS["401"]},
                }
            },
            "/v1/models/{model_name}": {
                "get": {
                    "summary": "layer catalogue, preprocessing, provider in use",
                    "parameters": [model],
                    "responses": {"200": _ok("ModelDetail", "the model"), "401": _ERRORS["401"], "404": _ERRORS["404"]},
                }
            },
            "/v1/models/{model_name}/features": {
                "post": {
                    "summary": "per-level, per-layer embeddings of one or more images",
                    "parameters": [model, *query],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {"schema": multipart},
                            "application/json": {"schema": _ref("FeaturesJSONRequest")},
                            "image/jpeg": raw,
                            "image/png": raw,
                            "image/webp": raw,
                        },
                    },
                    "responses": {"200": _ok("FeaturesResponse", "embeddings, in input order"), **_ERRORS},
                }
            },
            **_picture_paths(model, raw),
            **_search_paths(model, raw),
            "/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of every worker (requests, latency, images, batch sizes, errors)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format 0.0.4",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _ERRORS["401"],
                    },
                }
            },
        },
        "components": {"schemas": {**_SCHEMAS, **_SEARCH_SCHEMAS, "Labels": _LABELS}},
    }
