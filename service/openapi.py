"""The OpenAPI 3.1 contract of the service; the tests validate every real response against it and generate a
client from it (openapi-python-client), so it stays something generators can read: named schemas, no allOf,
binary strings marked `format: binary`, one place per option default (the body; query parameters have none).
"""

from __future__ import annotations

from functools import cache

from prometheus_client import CONTENT_TYPE_LATEST

from engine.features import DTYPES, ENCODINGS, MAX_TOP
from engine.manifest import LEVELS, POOLINGS, PRECISIONS
from engine.reload import STATUSES
from engine.search import DEFAULT_K
from engine.vector_index.base import MAX_K
from service.picture_routes import K_DEFAULT, K_MAX, K_MIN
from service.responses import NPZ, SAFETENSORS
from service.search_routes import THUMBNAIL_DEFAULT, THUMBNAIL_MAX, THUMBNAIL_MIN

_REF = "#/components/schemas/"
_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_INTEGERS = {"type": "array", "items": {"type": "integer"}}
_BINARY = {"type": "string", "format": "binary"}


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _ok(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _binary(media_type: str, description: str) -> dict:
    return {"description": description, "content": {media_type: {"schema": _BINARY}}}


# ---- options: each has its default in the body's field only; the query parameter is the same option for bodies
# that have no fields (a raw image) and carries no default, so a generated client never sends an option twice
# (the service refuses an option given in both places: 400)


def _option(schema: dict, description: str, default=None, query: dict | None = None) -> dict:
    """One option as a form field, a JSON field (null: the default) and a query parameter (`query`: its schema
    there, if not the field's)."""
    defaulted = {} if default is None else {"default": default}
    said = description if default is None else f"{description}; default {default}"
    return {
        "form": {**schema, "description": description, **defaulted},
        "json": {**_nullable(schema), "description": f"{description}; null means the default", **defaulted},
        "query": {**(query or schema), "description": said},
    }


_NAMES = {"oneOf": [_STRING, _STRINGS]}
_REPEATED = {"style": "form", "explode": True}  # ?levels=low&levels=mid, the same as ?levels=low,mid
_LEVELS = _option(_NAMES, f"levels to answer ({', '.join(LEVELS)}), a list or comma-separated; default all",
                  query=_STRINGS)  # fmt: skip
_FEATURE_OPTIONS = {
    "levels": _LEVELS,
    "layers": _option(_NAMES, "layer names, a list or comma-separated; overrides levels", query=_STRINGS),
    "pooling": _option(
        _NAMES,
        f"{', '.join(POOLINGS)} (none: full maps); several (a list or comma-separated, e.g. avg,max) answer "
        "each result's features_by_pooling instead of its features",
        "avg",
        query=_STRINGS,
    ),
    "normalize": _option(
        {"anyOf": [{"type": "boolean"}, _STRING]}, "L2 per vector (per spatial position for full maps)", False
    ),
    "encoding": _option(_ref("Encoding"), "json: numbers in `values`; base64: little-endian bytes in `data`", "json"),
    "dtype": _option(_ref("Dtype"), "of the answered arrays", "float32"),
    "top": _option(
        {"type": "integer", "minimum": 1, "maximum": MAX_TOP},
        "the k most probable classes per input (softmax of the logits layer), up to the number of labels; "
        "a model without labels answers 400",
    ),
}
_MAPS_OPTIONS = {
    "k": _option({"type": "integer", "minimum": K_MIN, "maximum": K_MAX}, "channels to draw", K_DEFAULT),
    "alpha": _option({"type": "number", "minimum": 0, "maximum": 1}, "map opacity", 0.6),
}
_SEARCH_OPTIONS = {
    "levels": _LEVELS,
    "layers": _option(_NAMES, "indexed layer names; overrides levels (default: every indexed layer)", query=_STRINGS),
    "pooling": _option(_NAMES, "avg or max, one only: how the indexed maps became vectors", "avg", query=_STRINGS),
    "k": _option({"type": "integer", "minimum": 1, "maximum": MAX_K}, "neighbours per layer", DEFAULT_K),
}
_QUERY_NOTE = (
    " (a query parameter: for raw-image bodies, or beside any body; give each option in one place only, "
    "the same option in the query and in the body is a 400)"
)
_URLS = {
    **_STRINGS,
    "description": "image URLs (http, https) or data URIs (data:image/png;base64,…), fetched by the service "
    "(FEATURES_URL_FETCH; private addresses only if FEATURES_URL_ALLOW lists them); repeatable",
}


def _query(options: dict) -> list[dict]:
    """The query parameters of an operation: its options without defaults, and `url` inputs (repeatable)."""
    parameters = []
    for name, forms in options.items():
        schema = forms["query"]
        repeated = _REPEATED if schema.get("type") == "array" else {}
        description = schema["description"] + _QUERY_NOTE
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema,
                           "description": description, **repeated})  # fmt: skip
    url = {"name": "url", "in": "query", "required": False, "schema": _STRINGS, **_REPEATED}
    return [*parameters, {**url, "description": _URLS["description"] + "; with an empty body or beside any body"}]


def _form(options: dict, max_images: int | None = None) -> dict:
    """A multipart body: `image` file parts, `url` text fields and the options as text fields."""
    images = {
        "type": "array",
        "items": {**_BINARY, "contentMediaType": "image/*"},
        "description": "image files (JPEG, PNG, WebP, GIF, BMP, TIFF); each part needs a filename "
        '(Content-Disposition: form-data; name="image"; filename="cat.jpg"), which the answer echoes as the '
        "input's name: a part without one is refused (400)",
    }
    if max_images:
        images["maxItems"] = max_images
    fields = {name: forms["form"] for name, forms in options.items()}
    return {
        "type": "object",
        "properties": {"image": images, "url": _URLS, **fields},
        "additionalProperties": False,
        "description": "at least one image part or url field",
    }


def _json_request(options: dict, description: str, max_items: int | None = None) -> dict:
    inputs = {"type": "array", "minItems": 1, "items": _ref("Input")}
    if max_items:
        inputs["maxItems"] = max_items
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": inputs, **{name: forms["json"] for name, forms in options.items()}},
        "additionalProperties": False,
        "description": description,
    }


def _image_body(form: str, json_request: str) -> dict:
    """The request body of an operation taking images: multipart, JSON or one raw image. A generator that sends
    raw bodies of one type picks the last one listed, JPEG; the service reads any of the three whatever the raw
    type says. Not required: `url` query parameters may carry the inputs instead."""
    raw = {"schema": _BINARY}
    return {
        "required": False,
        "content": {
            "multipart/form-data": {"schema": _ref(form)},
            "application/json": {"schema": _ref(json_request)},
            "image/png": raw,
            "image/webp": raw,
            "image/jpeg": raw,
        },
    }


# ---- schemas

_PRECISION = _ref("Precision")
# what every answer computed by a model says of it (service.request_steps.served_by)
_SERVED_BY = {"model": _STRING, "sha256": _STRING, "precision": _PRECISION, "provider": _STRING}
_SUMMARY = {
    "name": _STRING,
    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "precision": _PRECISION,
    "ready": {"type": "boolean"},
    "provider": {"type": ["string", "null"], "description": "the execution provider in use; null until loaded"},
    "levels": _ref("LayersByLevel"),
}
_DETAIL = {
    "providers": _STRINGS,
    "warnings": _STRINGS,
    "input": _ref("ModelInput"),
    "preprocess": _ref("Preprocess"),
    "layers": {"type": "array", "items": _ref("Layer")},
    "logits_layer": {"type": ["string", "null"]},
    "reload": {
        **_nullable(_ref("LastReload")),
        "description": "the latest reload (POST /v1/admin/reload, SIGHUP) that changed this model or failed, or "
        "its first success after a failure; null if none did",
    },
    "labels": {"type": "integer", "description": "how many class labels (0: none)"},
    "source": _ref("ModelSource"),
    "quality": {
        **_nullable(_ref("Quality")),
        "description": "int8/fp16: against the fp32 export (docs/precision.md); null for fp32",
    },
    "verification": _ref("Verification"),
}
_DETAIL_REQUIRED = ["providers", "warnings", "input", "preprocess", "layers", "reload", "source", "verification"]
_OPTIONAL_NAME = {"type": ["string", "null"], "description": "the input's name (a file name in multipart)"}

_PROBLEM = {
    "type": _STRING,
    "title": _STRING,
    "status": {"type": "integer"},
    "detail": _STRING,
    "request_id": _STRING,
    "valid": {**_STRINGS, "description": "the values that would have been accepted"},
    "index": {"type": "integer", "description": "the input at fault"},
    "limit": {"type": "integer", "description": "the limit exceeded"},
    "retry_after": {"type": "integer", "description": "seconds (also the Retry-After header)"},
    "url": {"type": "string", "description": "the input's URL, as the service shows it"},
}
_PROBLEM_REQUIRED = ["type", "title", "status", "detail"]

_SCHEMAS = {
    "Problem": {
        "type": "object",
        "required": _PROBLEM_REQUIRED,
        "properties": _PROBLEM,
        "description": "RFC 9457 problem details; every error answer is one",
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "models"],
        "properties": {"status": {"const": "ready"}, "models": _STRINGS},
    },
    "Precision": {
        "enum": list(PRECISIONS),
        "description": "of the export's weights and arithmetic (docs/precision.md)",
    },
    "Level": {"enum": list(LEVELS)},
    "Pooling": {"enum": list(POOLINGS)},
    "Dtype": {"enum": list(DTYPES)},
    "Encoding": {"enum": list(ENCODINGS)},
    "LayersByLevel": {
        "type": "object",
        "required": list(LEVELS),
        "properties": {level: _STRINGS for level in LEVELS},
        "additionalProperties": False,
        "description": "layer names of each level, in depth order",
    },
    "ModelSummary": {"type": "object", "required": list(_SUMMARY), "properties": _SUMMARY},
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": _ref("ModelSummary")}},
    },
    "ModelDetail": {
        "type": "object",
        "required": [*_SUMMARY, *_DETAIL_REQUIRED],
        "properties": {**_SUMMARY, **_DETAIL},
        "description": "the catalogue entry (ModelSummary's fields) and what the model computes",
    },
    "ModelInput": {
        "type": "object",
        "required": ["name", "shape", "layout", "dynamic_batch"],
        "properties": {
            "name": _STRING,
            "shape": {**_INTEGERS, "description": "[C, H, W], batch excluded"},
            "layout": _STRING,
            "dynamic_batch": {"type": "boolean"},
        },
    },
    "Preprocess": {
        "type": "object",
        "required": ["size", "resize", "crop", "interpolation", "mean", "std"],
        "properties": {
            "size": {**_INTEGERS, "description": "[H, W] of the network input"},
            "resize": {"type": "integer", "description": "shorter side before the crop"},
            "crop": _STRING,
            "interpolation": _STRING,
            "mean": {"type": "array", "items": {"type": "number"}, "description": "per channel, pixel units"},
            "std": {"type": "array", "items": {"type": "number"}, "description": "per channel, pixel units"},
            "channels": _STRING,
        },
        "description": "how an image becomes the network input: (pixel - mean) / std after resize and crop",
    },
    "ModelSource": {
        "type": "object",
        "required": ["kind", "origin"],
        "properties": {
            "kind": {"type": "string", "description": "zoo, module or onnx"},
            "origin": _STRING,
            "weights": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"]},
            "license": {"type": ["string", "null"]},
        },
    },
    "Verification": {
        "type": "object",
        "required": ["passed", "reference", "max_abs_error"],
        "properties": {"passed": {"type": "boolean"}, "reference": _STRING, "max_abs_error": {"type": "number"}},
        "description": "the export compared with its reference framework at export time",
    },
    "Quality": {
        "type": "object",
        "properties": {
            "reference": {"type": "string", "description": "the fp32 export's name"},
            "reference_sha256": _STRING,
            "method": _STRING,
            "passed": {"type": "boolean"},
            "top1_agreement": {"type": ["number", "null"]},
            "cosine": {"type": "object", "description": "layer -> pooling -> {mean, min} on held-out photos"},
        },
        "description": "a lower-precision export against its fp32 export: cosine per layer and pooling, top-1 "
        "agreement, on held-out photos",
    },
    "Layer": {
        "type": "object",
        "required": ["name", "level", "shape", "stride", "receptive_field", "pooling"],
        "properties": {
            "name": _STRING,
            "level": _ref("Level"),
            "shape": {**_INTEGERS, "description": "[C, H, W] for maps, [C] for vectors"},
            "stride": {"type": ["integer", "null"]},
            "receptive_field": {"type": ["integer", "null"]},
            "pooling": {"type": "array", "items": _ref("Pooling")},
            "global_context": {"type": "boolean"},
            "token_grid": {"type": "boolean"},
        },
    },
    "EncodedArray": {
        "type": "object",
        "required": ["shape", "dtype"],
        "properties": {
            "shape": _INTEGERS,
            "dtype": _ref("Dtype"),
            "values": {
                "type": "array",
                "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {}}]},
                "description": "encoding=json: the numbers, nested like `shape` (a vector's numbers; a map's "
                "channels of rows)",
            },
            "data": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "encoding=base64: the little-endian bytes, "
                'np.frombuffer(base64.b64decode(data), "<f4" or "<f2").reshape(shape)',
            },
        },
        "description": "one layer of one input; exactly one of values (encoding=json) and data (encoding=base64)",
    },
    "LayerArrays": {
        "type": "object",
        "additionalProperties": _ref("EncodedArray"),
        "description": "layer name -> its array, in depth order",
    },
    "FeaturesByLevel": {
        "type": "object",
        "properties": {level: _ref("LayerArrays") for level in LEVELS},
        "additionalProperties": False,
        "description": "the asked levels (or the levels of the asked layers)",
    },
    "FeaturesByPooling": {
        "type": "object",
        "properties": {pooling: _ref("FeaturesByLevel") for pooling in POOLINGS},
        "additionalProperties": False,
        "description": "the asked poolings",
    },
    "TopClass": {
        "type": "object",
        "required": ["index", "label", "probability"],
        "properties": {
            "index": {"type": "integer", "description": "in GET /v1/models/{model_name}/labels"},
            "label": _STRING,
            "probability": {"type": "number"},
        },
    },
    "FeaturesResult": {
        "type": "object",
        "required": ["index", "name"],
        "properties": {
            "index": {"type": "integer"},
            "name": _OPTIONAL_NAME,
            "features": {**_ref("FeaturesByLevel"), "description": "one pooling asked"},
            "features_by_pooling": {**_ref("FeaturesByPooling"), "description": "several poolings asked"},
            "top": {"type": "array", "items": _ref("TopClass"), "description": "top=k: most probable first"},
        },
    },
    "FeaturesOptions": {
        "type": "object",
        "required": ["levels", "layers", "pooling", "normalize", "encoding", "dtype", "top"],
        "properties": {
            "levels": {"type": "array", "items": _ref("Level")},
            "layers": {"type": ["array", "null"], "items": _STRING},
            "pooling": {"type": "string", "description": "comma-joined, in the asked order: avg or avg,max"},
            "normalize": {"type": "boolean"},
            "encoding": _ref("Encoding"),
            "dtype": _ref("Dtype"),
            "top": {"type": ["integer", "null"]},
        },
        "description": "what was computed, in a form the request may send back as it is",
    },
    "FeaturesResponse": {
        "type": "object",
        "required": [*_SERVED_BY, "options", "results", "timings_ms"],
        "properties": {
            **_SERVED_BY,
            "options": _ref("FeaturesOptions"),
            "results": {"type": "array", "items": _ref("FeaturesResult"), "description": "in input order"},
            "timings_ms": _ref("Timings"),
        },
    },
    "Timings": {"type": "object", "additionalProperties": {"type": "number"}, "description": "milliseconds"},
    "Input": {
        "oneOf": [_ref("ImageInput"), _ref("TensorInput"), _ref("UrlInput")],
        "description": "one input: an encoded image, a preprocessed tensor or an image URL",
    },
    "ImageInput": {
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"type": "string", "contentEncoding": "base64"}, "name": _STRING},
    },
    "TensorInput": {
        "type": "object",
        "required": ["tensor"],
        "properties": {"tensor": _ref("InputTensor"), "name": _STRING},
    },
    "UrlInput": {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "description": "http(s) URL or data URI of an image, fetched by the service"},
            "name": _STRING,
        },
    },
    "InputTensor": {
        "type": "object",
        "required": ["shape", "data"],
        "properties": {
            "shape": {**_INTEGERS, "description": "the model's input shape, [C, H, W]"},
            "dtype": {**_ref("Dtype"), "default": "float32"},
            "data": {"type": "string", "contentEncoding": "base64", "description": "little-endian bytes"},
        },
        "description": "preprocessed as GET /v1/models/{model_name} says",
    },
    "FeaturesForm": _form(_FEATURE_OPTIONS),
    "FeaturesJSONRequest": _json_request(_FEATURE_OPTIONS, "inputs and options"),
}

_ERRORS = {
    "400": _problem(
        "bad option, malformed JSON, bad tensor, or an image URL refused (its scheme, address or credentials, or "
        "fetching off)"
    ),
    "401": _problem("API key required"),
    "404": _problem("unknown model or layer (the problem lists valid names)"),
    "413": _problem(
        "body, number of inputs, form parts, a fetched image or an image's decoding memory above its limit "
        "(`limit` names it); the worker also answers 408 (request not received in time), 417 and 431 before the "
        "app sees a request"
    ),
    "415": _problem("unsupported Content-Type"),
    "422": _problem(
        "an image could not be decoded, is of an undocumented format, or makes the network overflow, or an image "
        "URL could not be fetched (the problem names its index, and `url`)"
    ),
    "503": _problem("models failed to load, the worker is stopping, or decoding memory is busy (see Retry-After)"),
}

_LABELS = {
    "type": "object",
    "required": ["model", "layer", "labels"],
    "properties": {
        "model": _STRING,
        "layer": {"type": ["string", "null"], "description": "the layer whose outputs the labels index"},
        "labels": _STRINGS,
    },
}
_PNG = _binary("image/png", "PNG")


def _picture_paths(model: dict) -> dict:
    """Pictures of a layer, class labels and the page (service/picture_routes.py; sizes: engine/pictures.py)."""
    layer = {"name": "layer_name", "in": "path", "required": True, "schema": _STRING, "example": "stem"}
    errors = {code: _ERRORS[code] for code in ("400", "401", "404")}
    return {
        "/": {
            "get": {
                "operationId": "get_page",
                "tags": ["pictures"],
                "summary": "the page: feature maps, receptive fields and top-5 classes of an image (no API key needed)",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": _STRING}}}},
            }
        },
        "/v1/models/{model_name}/labels": {
            "get": {
                "operationId": "get_labels",
                "tags": ["models"],
                "summary": "class names, in the order of the logits layer's outputs",
                "parameters": [model],
                "responses": {"200": _ok("Labels", "labels"), "401": _ERRORS["401"], "404": _ERRORS["404"]},
            }
        },
        "/v1/models/{model_name}/layers/{layer_name}/filters.png": {
            "get": {
                "operationId": "get_filters_png",
                "tags": ["pictures"],
                "summary": "the first convolution's filters as a colour grid (400 for layers that do not see pixels)",
                "description": "Each filter is scaled by its own largest |weight| (zero weight = grey) and enlarged "
                "with nearest neighbour to s = max(1, 48 // kernel) pixels per weight, 8 filters per row, 2-pixel "
                "gaps: width = columns·(kw·s + 2) + 2, height = rows·(kh·s + 2) + 2; 402×202 for the 32 3×3 "
                "filters of EfficientNet-Lite0.",
                "parameters": [model, layer],
                "responses": {"200": _PNG, **errors},
            }
        },
        "/v1/models/{model_name}/layers/{layer_name}/maps.png": {
            "post": {
                "operationId": "draw_maps_png",
                "tags": ["pictures"],
                "summary": "the k strongest channels of one image's map at a layer, over the image, captioned",
                "description": "Channels with the highest mean activation, each stretched to its own min..max, "
                "upsampled bilinearly and drawn in viridis at opacity alpha over the preprocessed input in grey; "
                "the caption gives level, stride and receptive field. min(k, channels) tiles of the input size "
                "H×W, 4 per row, 4-pixel gaps, 40-pixel caption: width = columns·(W + 4) + 4, height = 40 + "
                "rows·(H + 4) + 4 (916×500 for k = 8 at 224 px). Same input forms as /features, one image only; "
                "vector layers have no map (400).",
                "parameters": [model, layer, *_query(_MAPS_OPTIONS)],
                "requestBody": _image_body("MapsForm", "MapsJSONRequest"),
                "responses": {"200": _PNG, **_ERRORS},
            }
        },
    }


_NEIGHBOURS = {"type": "array", "items": _ref("Neighbour"), "description": "best first"}
_SEARCH_SCHEMAS = {
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
        "properties": {level: _ref("NeighboursByLayer") for level in LEVELS},
        "additionalProperties": False,
    },
    "SearchResult": {
        "type": "object",
        "required": ["index", "name", "neighbours"],
        "properties": {"index": {"type": "integer"}, "name": _OPTIONAL_NAME, "neighbours": _ref("NeighboursByLevel")},
    },
    "SearchOptions": {
        "type": "object",
        "required": ["levels", "layers", "pooling", "k"],
        "properties": {
            "levels": {"type": "array", "items": _ref("Level")},
            "layers": {"type": ["array", "null"], "items": _STRING},
            "pooling": _STRING,
            "k": {"type": "integer"},
        },
    },
    "SearchedIndex": {
        "type": "object",
        "required": ["collection", "entries"],
        "properties": {"collection": _STRING, "entries": {"type": "integer"}},
    },
    "SearchResponse": {
        "type": "object",
        "required": [*_SERVED_BY, "index", "options", "results"],
        "properties": {
            **_SERVED_BY,
            "index": _ref("SearchedIndex"),
            "options": _ref("SearchOptions"),
            "results": {"type": "array", "items": _ref("SearchResult")},
            "timings_ms": _ref("Timings"),
        },
    },
    "IndexedLayer": {
        "type": "object",
        "required": ["name", "size"],
        "properties": {"name": _STRING, "size": {"type": "integer"}},
    },
    "Collection": {
        "type": "object",
        "required": ["name", "model", "model_sha256", "pooling", "layers", "entries", "searchable"],
        "properties": {
            "name": _STRING,
            "model": _STRING,
            "model_sha256": _STRING,
            "pooling": {"enum": ["avg", "max"]},
            "layers": {"type": "array", "items": _ref("IndexedLayer")},
            "entries": {"type": "integer"},
            "searchable": {"type": "boolean", "description": "built by the very model served here"},
        },
    },
    "IndexCatalogue": {
        "type": "object",
        "required": ["target", "collections"],
        "properties": {
            "target": {"type": "string", "description": "FEATURES_INDEX (a URL's password is never shown)"},
            "collections": {"type": "array", "items": _ref("Collection")},
        },
    },
    "SearchForm": _form(_SEARCH_OPTIONS),
    "SearchJSONRequest": _json_request(_SEARCH_OPTIONS, "inputs and search options"),
    "MapsForm": _form(_MAPS_OPTIONS, max_images=1),
    "MapsJSONRequest": _json_request(_MAPS_OPTIONS, "one input and the drawing options", max_items=1),
}


def _search_paths(model: dict) -> dict:
    """Search by level (service/search_routes.py) over the index that batch extraction writes."""
    entry = {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    size = {"type": "integer", "minimum": THUMBNAIL_MIN, "maximum": THUMBNAIL_MAX, "default": THUMBNAIL_DEFAULT,
            "description": "longest side"}  # fmt: skip
    not_found = _problem("no index configured (FEATURES_INDEX), no such collection, layer or entry, or its file gone")
    return {
        "/v1/models/{model_name}/search": {
            "post": {
                "operationId": "search_images",
                "tags": ["search"],
                "summary": "nearest indexed images of each input, per layer: what each level finds alike",
                "parameters": [model, *_query(_SEARCH_OPTIONS)],
                "requestBody": _image_body("SearchForm", "SearchJSONRequest"),
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
                "operationId": "get_index_catalogue",
                "tags": ["search"],
                "summary": "the index's collections: model, pooling, layers, entries",
                "responses": {"200": _ok("IndexCatalogue", "collections"), "401": _ERRORS["401"], "404": not_found},
            }
        },
        "/v1/index/entries/{entry_id}/image": {
            "get": {
                "operationId": "get_entry_image",
                "tags": ["search"],
                "summary": "a JPEG thumbnail of an indexed image",
                "parameters": [entry, {"name": "size", "in": "query", "required": False, "schema": size}],
                "responses": {
                    "200": _binary("image/jpeg", "JPEG"),
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


_RELOAD_REPORT = {
    "models": _ref("ReloadOutcomes"),
    "other_workers_signalled": {
        "type": "boolean",
        "description": "the gunicorn master was sent SIGHUP, so every other worker reloads too (several workers)",
    },
}
_ADMIN_SCHEMAS = {
    "ReloadStatus": {"enum": list(STATUSES)},
    "ModelReload": {
        "type": "object",
        "required": ["status", "sha256", "previous_sha256", "error"],
        "properties": {
            "status": _ref("ReloadStatus"),
            "sha256": {"type": ["string", "null"], "description": "the export serving the name now (null: none)"},
            "previous_sha256": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"], "description": "why it failed"},
        },
        "description": "what one reload did to one model name",
    },
    "ReloadOutcomes": {"type": "object", "additionalProperties": _ref("ModelReload"), "description": "by model"},
    "ReloadReport": {"type": "object", "required": list(_RELOAD_REPORT), "properties": _RELOAD_REPORT},
    "ReloadProblem": {
        "type": "object",
        "required": [*_PROBLEM_REQUIRED, *_RELOAD_REPORT],
        "properties": {**_PROBLEM, **_RELOAD_REPORT},
        "description": "a reload in which some model failed: a problem that also holds the whole report",
    },
    "LastReload": {
        "type": "object",
        "required": ["status", "at", "error"],
        "properties": {
            "status": _ref("ReloadStatus"),
            "at": {"type": "string", "format": "date-time", "description": "when the reload ended (UTC)"},
            "error": {"type": ["string", "null"]},
        },
    },
}
_ADMIN_PATHS = {
    "/v1/admin/reload": {
        "post": {
            "operationId": "reload_models",
            "tags": ["admin"],
            "summary": "reload the models folder in place, in every worker: changed exports replace the served "
            "ones once loaded and warmed up, without a failed request (docs/operations.md)",
            "security": [{"adminKey": []}],
            "responses": {
                "200": _ok("ReloadReport", "what the reload did to each model"),
                "401": _problem("missing or wrong admin key"),
                "403": _problem("admin calls are off: the service has no FEATURES_ADMIN_KEY"),
                "422": {
                    "description": "some model failed to reload and keeps serving its previous export, if it had "
                    "one; `models` says why",
                    "content": {"application/problem+json": {"schema": _ref("ReloadProblem")}},
                },
                "503": _ERRORS["503"],
            },
        }
    }
}

_SECURITY = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "FEATURES_API_KEY: every route but the probes and the page needs it when the service has "
        "one (401 otherwise); a service without one takes requests without it",
    },
    "adminKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "FEATURES_ADMIN_KEY, for the admin routes only (403 when the service has none)",
    },
}


@cache
def openapi_document() -> dict:
    model = {"name": "model_name", "in": "path", "required": True, "schema": _STRING, "example": "efficientnet_lite0"}
    binary_answer = "tensors {layer}/{pooling} [N, …] (and top/index, top/probability with top=k); the rest of the "
    features_ok = {
        "description": "embeddings, in input order; by the Accept header: JSON (the default), or one tensor per "
        "layer and pooling in a safetensors file or an npz archive",
        "content": {
            "application/json": {"schema": _ref("FeaturesResponse")},
            SAFETENSORS: {
                "schema": {
                    **_BINARY,
                    "description": binary_answer + "answer as JSON in the header's __metadata__['response']",
                }
            },
            NPZ: {
                "schema": {
                    **_BINARY,
                    "description": binary_answer + "answer as JSON in the member __response__ (no pickle)",
                }
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cnn-features",
            "version": "1.0.0",
            "description": "Low-, mid- and high-level CNN embeddings of images, layer by layer.",
        },
        # the key is needed only where the service has one: `{}` says a request without it may be answered too
        "security": [{"apiKey": []}, {}],
        "tags": [
            {"name": "probes", "description": "liveness, readiness, metrics and this document"},
            {"name": "models", "description": "the models served, their layers and labels"},
            {"name": "features", "description": "embeddings of images, layer by layer"},
            {"name": "pictures", "description": "filters, activation maps and the page"},
            {"name": "search", "description": "nearest indexed images per layer"},
            {"name": "admin", "description": "operators' calls, behind the admin key"},
        ],
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "get_health",
                    "tags": ["probes"],
                    "summary": "liveness",
                    "security": [],
                    "responses": {"200": _ok("Health", "alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "get_readiness",
                    "tags": ["probes"],
                    "summary": "readiness: every model loaded and warmed up",
                    "security": [],
                    "responses": {"200": _ok("Ready", "ready"), "503": _ERRORS["503"]},
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "list_models",
                    "tags": ["models"],
                    "summary": "the models served",
                    "responses": {"200": _ok("ModelList", "models"), "401": _ERRORS["401"]},
                }
            },
            "/v1/models/{model_name}": {
                "get": {
                    "operationId": "get_model",
                    "tags": ["models"],
                    "summary": "layer catalogue, preprocessing, provider in use",
                    "parameters": [model],
                    "responses": {"200": _ok("ModelDetail", "the model"), "401": _ERRORS["401"], "404": _ERRORS["404"]},
                }
            },
            "/v1/models/{model_name}/features": {
                "post": {
                    "operationId": "extract_features",
                    "tags": ["features"],
                    "summary": "per-level, per-layer embeddings of one or more images",
                    "parameters": [model, *_query(_FEATURE_OPTIONS)],
                    "requestBody": _image_body("FeaturesForm", "FeaturesJSONRequest"),
                    "responses": {
                        "200": features_ok,
                        **_ERRORS,
                        "406": _problem(f"the Accept header allows none of application/json, {SAFETENSORS}, {NPZ}"),
                    },
                }
            },
            **_picture_paths(model),
            **_search_paths(model),
            **_ADMIN_PATHS,
            "/openapi.json": {
                "get": {
                    "operationId": "get_openapi",
                    "tags": ["probes"],
                    "summary": "this document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _ERRORS["401"],
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "get_metrics",
                    "tags": ["probes"],
                    "summary": "Prometheus metrics of every worker (requests, latency, images, batch sizes, errors)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format, as prometheus_client writes it",
                            "content": {CONTENT_TYPE_LATEST: {"schema": _STRING}},
                        },
                        "401": _ERRORS["401"],
                    },
                }
            },
        },
        "components": {
            "schemas": {**_SCHEMAS, **_SEARCH_SCHEMAS, **_ADMIN_SCHEMAS, "Labels": _LABELS},
            "securitySchemes": _SECURITY,
        },
    }
