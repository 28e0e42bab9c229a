"""The options of the image-taking operations (features, maps, search) in their three places (form field, JSON
field, query parameter), and the request bodies and query parameters built from them."""

from __future__ import annotations

from engine.features import MAX_TOP
from engine.manifest import LEVELS, POOLINGS
from engine.search import DEFAULT_K
from engine.vector_index.base import MAX_K
from service.openapi.common import BINARY, STRING, STRINGS, nullable, ref
from service.picture_routes import K_DEFAULT, K_MAX, K_MIN

# Each option has its default in the body's field only; the query parameter is the same option for bodies
# that have no fields (a raw image) and carries no default, so a generated client never sends an option twice
# (the service refuses an option given in both places: 400)


def _option(schema: dict, description: str, default=None, query: dict | None = None) -> dict:
    """One option as a form field, a JSON field (null: the default) and a query parameter (`query`: its schema
    there, if not the field's)."""
    defaulted = {} if default is None else {"default": default}
    said = description if default is None else f"{description}; default {default}"
    return {
        "form": {**schema, "description": description, **defaulted},
        "json": {**nullable(schema), "description": f"{description}; null means the default", **defaulted},
        "query": {**(query or schema), "description": said},
    }


_NAMES = {"oneOf": [STRING, STRINGS]}
_REPEATED = {"style": "form", "explode": True}  # ?levels=low&levels=mid, the same as ?levels=low,mid
_LEVELS = _option(_NAMES, f"levels to answer ({', '.join(LEVELS)}), a list or comma-separated; default all",
                  query=STRINGS)  # fmt: skip
FEATURE_OPTIONS = {
    "levels": _LEVELS,
    "layers": _option(_NAMES, "layer names, a list or comma-separated; overrides levels", query=STRINGS),
    "pooling": _option(
        _NAMES,
        f"{', '.join(POOLINGS)} (none: full maps); several (a list or comma-separated, e.g. avg,max) answer "
        "each result's features_by_pooling instead of its features",
        "avg",
        query=STRINGS,
    ),
    "normalize": _option(
        {"anyOf": [{"type": "boolean"}, STRING]}, "L2 per vector (per spatial position for full maps)", False
    ),
    "encoding": _option(ref("Encoding"), "json: numbers in `values`; base64: little-endian bytes in `data`", "json"),
    "dtype": _option(ref("Dtype"), "of the answered arrays", "float32"),
    "top": _option(
        {"type": "integer", "minimum": 1, "maximum": MAX_TOP},
        "the k most probable classes per input (softmax of the logits layer), up to the number of labels; "
        "a model without labels answers 400",
    ),
}
MAPS_OPTIONS = {
    "k": _option({"type": "integer", "minimum": K_MIN, "maximum": K_MAX}, "channels to draw", K_DEFAULT),
    "alpha": _option({"type": "number", "minimum": 0, "maximum": 1}, "map opacity", 0.6),
}
SEARCH_OPTIONS = {
    "levels": _LEVELS,
    "layers": _option(_NAMES, "indexed layer names; overrides levels (default: every indexed layer)", query=STRINGS),
    "pooling": _option(_NAMES, "avg or max, one only: how the indexed maps became vectors", "avg", query=STRINGS),
    "k": _option({"type": "integer", "minimum": 1, "maximum": MAX_K}, "neighbours per layer", DEFAULT_K),
}
_QUERY_NOTE = (
    " (a query parameter: for raw-image bodies, or beside any body; give each option in one place only, "
    "the same option in the query and in the body is a 400)"
)
_URLS = {
    **STRINGS,
    "description": "image URLs (http, https) or data URIs (data:image/png;base64,…), fetched by the service "
    "(FEATURES_URL_FETCH; private addresses only if FEATURES_URL_ALLOW lists them); repeatable",
}


def query_parameters(options: dict) -> list[dict]:
    """The query parameters of an operation: its options without defaults, and `url` inputs (repeatable)."""
    parameters = []
    for name, forms in options.items():
        schema = forms["query"]
        repeated = _REPEATED if schema.get("type") == "array" else {}
        description = schema["description"] + _QUERY_NOTE
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema,
                           "description": description, **repeated})  # fmt: skip
    url = {"name": "url", "in": "query", "required": False, "schema": STRINGS, **_REPEATED}
    return [*parameters, {**url, "description": _URLS["description"] + "; with an empty body or beside any body"}]


def form(options: dict, max_images: int | None = None) -> dict:
    """A multipart body: `image` file parts, `url` text fields and the options as text fields."""
    images = {
        "type": "array",
        "items": {**BINARY, "contentMediaType": "image/*"},
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


def json_request(options: dict, description: str, max_items: int | None = None) -> dict:
    inputs = {"type": "array", "minItems": 1, "items": ref("Input")}
    if max_items:
        inputs["maxItems"] = max_items
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": inputs, **{name: forms["json"] for name, forms in options.items()}},
        "additionalProperties": False,
        "description": description,
    }


def image_body(form: str, json_request: str) -> dict:
    """The request body of an operation taking images: multipart, JSON or one raw image. A generator that sends
    raw bodies of one type picks the last one listed, JPEG; the service reads any of the three whatever the raw
    type says. Not required: `url` query parameters may carry the inputs instead."""
    raw = {"schema": BINARY}
    return {
        "required": False,
        "content": {
            "multipart/form-data": {"schema": ref(form)},
            "application/json": {"schema": ref(json_request)},
            "image/png": raw,
            "image/webp": raw,
            "image/jpeg": raw,
        },
    }
