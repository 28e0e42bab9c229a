"""The named schemas of the models, the features answers, their inputs and the problem details; the pieces that
other parts reuse (what served an answer, an input's name, the problem's fields) are public."""

from __future__ import annotations

from engine.features import DTYPES, ENCODINGS
from engine.manifest import LEVELS, POOLINGS, PRECISIONS
from service.openapi.common import INTEGERS, STRING, STRINGS, nullable, ref
from service.openapi.options import FEATURE_OPTIONS, form, json_request

_PRECISION = ref("Precision")
# what every answer computed by a model says of it (service.request_steps.served_by)
SERVED_BY = {"model": STRING, "sha256": STRING, "precision": _PRECISION, "provider": STRING}
_SUMMARY = {
    "name": STRING,
    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "precision": _PRECISION,
    "ready": {"type": "boolean"},
    "provider": {"type": ["string", "null"], "description": "the execution provider in use; null until loaded"},
    "levels": ref("LayersByLevel"),
}
_DETAIL = {
    "providers": STRINGS,
    "warnings": STRINGS,
    "input": ref("ModelInput"),
    "preprocess": ref("Preprocess"),
    "layers": {"type": "array", "items": ref("Layer")},
    "logits_layer": {"type": ["string", "null"]},
    "reload": {
        **nullable(ref("LastReload")),
        "description": "the latest reload (POST /v1/admin/reload, SIGHUP) that changed this model or failed, or "
        "its first success after a failure; null if none did",
    },
    "labels": {"type": "integer", "description": "how many class labels (0: none)"},
    "source": ref("ModelSource"),
    "quality": {
        **nullable(ref("Quality")),
        "description": "int8/fp16: against the fp32 export (docs/precision.md); null for fp32",
    },
    "verification": ref("Verification"),
}
_DETAIL_REQUIRED = ["providers", "warnings", "input", "preprocess", "layers", "reload", "source", "verification"]
OPTIONAL_NAME = {"type": ["string", "null"], "description": "the input's name (a file name in multipart)"}

PROBLEM = {
    "type": STRING,
    "title": STRING,
    "status": {"type": "integer"},
    "detail": STRING,
    "request_id": STRING,
    "valid": {**STRINGS, "description": "the values that would have been accepted"},
    "index": {"type": "integer", "description": "the input at fault"},
    "limit": {"type": "integer", "description": "the limit exceeded"},
    "retry_after": {"type": "integer", "description": "seconds (also the Retry-After header)"},
    "url": {"type": "string", "description": "the input's URL, as the service shows it"},
}
PROBLEM_REQUIRED = ["type", "title", "status", "detail"]

SCHEMAS = {
    "Problem": {
        "type": "object",
        "required": PROBLEM_REQUIRED,
        "properties": PROBLEM,
        "description": "RFC 9457 problem details; every error answer is one",
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "models"],
        "properties": {"status": {"const": "ready"}, "models": STRINGS},
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
        "properties": {level: STRINGS for level in LEVELS},
        "additionalProperties": False,
        "description": "layer names of each level, in depth order",
    },
    "ModelSummary": {"type": "object", "required": list(_SUMMARY), "properties": _SUMMARY},
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": ref("ModelSummary")}},
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
            "name": STRING,
            "shape": {**INTEGERS, "description": "[C, H, W], batch excluded"},
            "layout": STRING,
            "dynamic_batch": {"type": "boolean"},
        },
    },
    "Preprocess": {
        "type": "object",
        "required": ["size", "resize", "crop", "interpolation", "mean", "std"],
        "properties": {
            "size": {**INTEGERS, "description": "[H, W] of the network input"},
            "resize": {"type": "integer", "description": "shorter side before the crop"},
            "crop": STRING,
            "interpolation": STRING,
            "mean": {"type": "array", "items": {"type": "number"}, "description": "per channel, pixel units"},
            "std": {"type": "array", "items": {"type": "number"}, "description": "per channel, pixel units"},
            "channels": STRING,
        },
        "description": "how an image becomes the network input: (pixel - mean) / std after resize and crop",
    },
    "ModelSource": {
        "type": "object",
        "required": ["kind", "origin"],
        "properties": {
            "kind": {"type": "string", "description": "zoo, module or onnx"},
            "origin": STRING,
            "weights": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"]},
            "license": {"type": ["string", "null"]},
        },
    },
    "Verification": {
        "type": "object",
        "required": ["passed", "reference", "max_abs_error"],
        "properties": {"passed": {"type": "boolean"}, "reference": STRING, "max_abs_error": {"type": "number"}},
        "description": "the export compared with its reference framework at export time",
    },
    "Quality": {
        "type": "object",
        "properties": {
            "reference": {"type": "string", "description": "the fp32 export's name"},
            "reference_sha256": STRING,
            "method": STRING,
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
            "name": STRING,
            "level": ref("Level"),
            "shape": {**INTEGERS, "description": "[C, H, W] for maps, [C] for vectors"},
            "stride": {"type": ["integer", "null"]},
            "receptive_field": {"type": ["integer", "null"]},
            "pooling": {"type": "array", "items": ref("Pooling")},
            "global_context": {"type": "boolean"},
            "token_grid": {"type": "boolean"},
        },
    },
    "EncodedArray": {
        "type": "object",
        "required": ["shape", "dtype"],
        "properties": {
            "shape": INTEGERS,
            "dtype": ref("Dtype"),
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
        "additionalProperties": ref("EncodedArray"),
        "description": "layer name -> its array, in depth order",
    },
    "FeaturesByLevel": {
        "type": "object",
        "properties": {level: ref("LayerArrays") for level in LEVELS},
        "additionalProperties": False,
        "description": "the asked levels (or the levels of the asked layers)",
    },
    "FeaturesByPooling": {
        "type": "object",
        "properties": {pooling: ref("FeaturesByLevel") for pooling in POOLINGS},
        "additionalProperties": False,
        "description": "the asked poolings",
    },
    "TopClass": {
        "type": "object",
        "required": ["index", "label", "probability"],
        "properties": {
            "index": {"type": "integer", "description": "in GET /v1/models/{model_name}/labels"},
            "label": STRING,
            "probability": {"type": "number"},
        },
    },
    "FeaturesResult": {
        "type": "object",
        "required": ["index", "name"],
        "properties": {
            "index": {"type": "integer"},
            "name": OPTIONAL_NAME,
            "features": {**ref("FeaturesByLevel"), "description": "one pooling asked"},
            "features_by_pooling": {**ref("FeaturesByPooling"), "description": "several poolings asked"},
            "top": {"type": "array", "items": ref("TopClass"), "description": "top=k: most probable first"},
        },
    },
    "FeaturesOptions": {
        "type": "object",
        "required": ["levels", "layers", "pooling", "normalize", "encoding", "dtype", "top"],
        "properties": {
            "levels": {"type": "array", "items": ref("Level")},
            "layers": {"type": ["array", "null"], "items": STRING},
            "pooling": {"type": "string", "description": "comma-joined, in the asked order: avg or avg,max"},
            "normalize": {"type": "boolean"},
            "encoding": ref("Encoding"),
            "dtype": ref("Dtype"),
            "top": {"type": ["integer", "null"]},
        },
        "description": "what was computed, in a form the request may send back as it is",
    },
    "FeaturesResponse": {
        "type": "object",
        "required": [*SERVED_BY, "options", "results", "timings_ms"],
        "properties": {
            **SERVED_BY,
            "options": ref("FeaturesOptions"),
            "results": {"type": "array", "items": ref("FeaturesResult"), "description": "in input order"},
            "timings_ms": ref("Timings"),
        },
    },
    "Timings": {"type": "object", "additionalProperties": {"type": "number"}, "description": "milliseconds"},
    "Input": {
        "oneOf": [ref("ImageInput"), ref("TensorInput"), ref("UrlInput")],
        "description": "one input: an encoded image, a preprocessed tensor or an image URL",
    },
    "ImageInput": {
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"type": "string", "contentEncoding": "base64"}, "name": STRING},
    },
    "TensorInput": {
        "type": "object",
        "required": ["tensor"],
        "properties": {"tensor": ref("InputTensor"), "name": STRING},
    },
    "UrlInput": {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "description": "http(s) URL or data URI of an image, fetched by the service"},
            "name": STRING,
        },
    },
    "InputTensor": {
        "type": "object",
        "required": ["shape", "data"],
        "properties": {
            "shape": {**INTEGERS, "description": "the model's input shape, [C, H, W]"},
            "dtype": {**ref("Dtype"), "default": "float32"},
            "data": {"type": "string", "contentEncoding": "base64", "description": "little-endian bytes"},
        },
        "description": "preprocessed as GET /v1/models/{model_name} says",
    },
    "FeaturesForm": form(FEATURE_OPTIONS),
    "FeaturesJSONRequest": json_request(FEATURE_OPTIONS, "inputs and options"),
}
