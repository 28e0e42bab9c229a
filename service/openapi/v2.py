"""The Open Inference Protocol (KServe V2) REST routes under /v2 (service/v2_routes.py): their schemas and paths.

A model route is documented twice, as Flask serves it: under /v2/models/{model_name} and under
…/versions/1, the only version. Literal paths rather than a `{version}` parameter with one value: a generator
makes no one-member enum of it, schemathesis fuzzes exactly the routes that exist instead of versions that are
404 by design, and the document's paths stay the route templates that label the metrics.
"""

from __future__ import annotations

from service.openapi.common import BINARY, INTEGERS, STRING, STRINGS, ref
from service.v2_framing import CONTENT_ENCODINGS, FIXED_DATATYPES, HEADER_LENGTH, MAX_RANK, PREFIX
from service.v2_routes import IMAGE_INPUT, VERSION

TAG = "Open Inference Protocol"
TAG_DESCRIPTION = (
    "KServe V2 REST, as Triton and OpenVINO Model Server speak it (tritonclient works), with the binary tensor "
    'data extension: the same models, limits and API key as /v1; errors are {"error": …}. See docs/v2.md.'
)
_NUMBERS = {"type": "array", "items": {"type": "number"}}
# The request's schemas type every value: no `{}` items and no free-form extra keys. Drawing arbitrary JSON this
# deep in a body crashes schemathesis 4.32 on Python 3.11 (hypothesis's lambda source parser: "AST constructor
# recursion depth mismatch"), so tensor data is described flat (nested lists are read too), objects are closed,
# and parameters take the protocol's scalar values.
_ELEMENT = {"anyOf": [{"type": "number"}, {"type": "boolean"}, STRING]}
_PARAMETER = {"anyOf": [STRING, {"type": "number"}, {"type": "boolean"}]}
_SHAPE = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "maxItems": MAX_RANK,
    "description": "dimensions, row major",
}
_BINARY_SIZE = {
    "type": "integer",
    "minimum": 0,
    "description": "the tensor travels as this many raw bytes after the JSON header (binary tensor data)",
}

_PIXEL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mM4UaEBAAN0AWn1BwN7AAAAAElFTkSuQmCC"
# a real request (schemathesis sends it, so one infer answer is checked whole): the stem's average of a 1×1 PNG
INFER_EXAMPLE = {
    "id": "1",
    "inputs": [{"name": IMAGE_INPUT, "shape": [1], "datatype": "BYTES", "data": [_PIXEL_PNG]}],
    "outputs": [{"name": "stem__avg"}],
}
_BINARY_OUTPUT = {"type": "boolean", "description": "every output as raw bytes, unless its own binary_data says no"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref("V2Error")}}}


def _ok(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def _parameters(known: dict, more: str = "") -> dict:
    """A request's `parameters`: the ones read here, and any other the protocol allows (ignored)."""
    return {"type": "object", "properties": known, "additionalProperties": _PARAMETER,
            "description": f"other parameters (strings, numbers, booleans) are ignored{more}"}  # fmt: skip


V2_SCHEMAS = {
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": STRING},
        "description": "every error answer under /v2, as the protocol has it (not a problem+json)",
    },
    "V2Datatype": {"enum": [*FIXED_DATATYPES, "BYTES"], "description": "tensor element types of the protocol"},
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {"name": STRING, "version": STRING, "extensions": STRINGS},
    },
    "V2TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": STRING,
            "datatype": ref("V2Datatype"),
            "shape": {**INTEGERS, "description": "-1: any size (the batch)"},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": STRING,
            "versions": STRINGS,
            "platform": STRING,
            "inputs": {
                "type": "array",
                "items": ref("V2TensorMetadata"),
                "description": f"{IMAGE_INPUT} (BYTES [-1]: encoded images) and the ONNX input (FP32 "
                "[-1, 3, H, W]: preprocessed as GET /v1/models/{model_name} says); a request gives one of them",
            },
            "outputs": {
                "type": "array",
                "items": ref("V2TensorMetadata"),
                "description": "each layer's map ({layer}) and pooled vectors ({layer}__avg, {layer}__max)",
            },
        },
    },
    "V2InferInputParameters": _parameters({"binary_data_size": _BINARY_SIZE}),
    "V2InferInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "description": f"{IMAGE_INPUT} or the model's ONNX input"},
            "shape": _SHAPE,
            "datatype": ref("V2Datatype"),
            "data": {
                "type": "array",
                "items": _ELEMENT,
                "description": f"the elements, flat in row-major order (nested lists are read too), unless "
                f"binary_data_size is given; {IMAGE_INPUT}: each image as a base64 string",
            },
            "parameters": ref("V2InferInputParameters"),
        },
    },
    "V2InferRequestedOutputParameters": _parameters(
        {"binary_data": {"type": "boolean", "description": "this output as raw bytes after the JSON header"}},
        "; classification is refused (400): that extension is not offered, /v1 features with top=k are",
    ),
    "V2InferRequestedOutput": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {"name": STRING, "parameters": ref("V2InferRequestedOutputParameters")},
    },
    "V2InferRequestParameters": _parameters({"binary_data_output": _BINARY_OUTPUT}),
    "V2InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "description": "echoed in the answer"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": ref("V2InferInput")},
            "outputs": {
                "type": "array",
                "items": ref("V2InferRequestedOutput"),
                "description": "default: every layer's {layer}__avg (a vector layer by its own name)",
            },
            "parameters": ref("V2InferRequestParameters"),
        },
    },
    "V2InferOutputParameters": {"type": "object", "properties": {"binary_data_size": _BINARY_SIZE}},
    "V2InferOutput": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": STRING,
            "datatype": ref("V2Datatype"),
            "shape": INTEGERS,
            "data": {**_NUMBERS, "description": "flat, row major (absent when sent as binary)"},
            "parameters": ref("V2InferOutputParameters"),
        },
    },
    "V2InferResponse": {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": STRING,
            "model_version": STRING,
            "id": STRING,
            "outputs": {"type": "array", "items": ref("V2InferOutput"), "description": "in the asked order"},
        },
    },
}

_HEADER_LENGTH = {
    "type": "integer",
    "minimum": 0,
    "description": "bytes of the JSON header when binary tensor data follow it; without it the body is all JSON",
}
# a string, not an enum: codings are case-insensitive and an empty one is identity, as the route reads them
_CONTENT_ENCODING = {
    "type": "string",
    "description": f"{', '.join(CONTENT_ENCODINGS)} or identity: how the body is compressed (tritonclient's "
    "request_compression_algorithm); it is inflated up to FEATURES_MAX_BODY_BYTES, any other coding is a 415",
}
_UNAUTHORIZED = _error("API key required")
_NOT_FOUND = _error("unknown model")
_RELOADING = _error("the model is being reloaded (see Retry-After)")
# an infer answer with binary outputs: its JSON header (V2InferResponse) and then each binary output's bytes
_INFER_OK = {
    "description": "the outputs: all JSON (application/json), or (some output asked as binary) the JSON header "
    "then each binary output's little-endian bytes, in order (application/octet-stream)",
    "headers": {HEADER_LENGTH: {"required": False, "schema": _HEADER_LENGTH}},
    "content": {
        "application/json": {"schema": ref("V2InferResponse")},
        "application/octet-stream": {"schema": {**BINARY, "description": "V2InferResponse as JSON, then bytes"}},
    },
}
_INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": ref("V2InferRequest"), "example": INFER_EXAMPLE},
        "application/octet-stream": {
            "schema": {
                **BINARY,
                "description": f"V2InferRequest as JSON ({HEADER_LENGTH} bytes), then each input's "
                "binary_data_size bytes in input order; a BYTES element is a 4-byte little-endian length and "
                "its bytes",
            }
        },
    },
}
_INFER_ERRORS = {
    "400": _error(
        "malformed request: JSON, framing (a truncated body, a header length past it), an unknown input or "
        "output, a wrong datatype or shape, bad base64, the classification extension, a compressed body that "
        "does not inflate"
    ),
    "401": _UNAUTHORIZED,
    "404": _NOT_FOUND,
    "413": _error(
        "the body (inflated, if compressed) is above FEATURES_MAX_BODY_BYTES, or more images than "
        "FEATURES_MAX_IMAGES; the worker also answers 408, 417 and 431 in this form before the app sees a request"
    ),
    "415": _error("a Content-Encoding other than gzip, deflate or identity"),
    "422": _error("an image could not be decoded"),
    "503": _error(
        "models failed to load, the model is being reloaded, the worker is stopping, or decoding memory is busy "
        "(see Retry-After)"
    ),
}


def _operation(operation_id: str, summary: str, responses: dict, **more) -> dict:
    return {"operationId": operation_id, "tags": [TAG], "summary": summary, **more, "responses": responses}


def _model_operations(model: dict) -> dict[str, dict]:
    """The model routes under /v2/models/{model_name}, by the suffix of their path."""
    metadata = {"200": _ok("V2ModelMetadata", "metadata"), "401": _UNAUTHORIZED, "404": _NOT_FOUND,
                "503": _RELOADING}  # fmt: skip
    ready = {
        "200": {"description": "ready (no body)"},
        # no content, so a generated client reads none; a reload's rare JSON error is said, not parsed
        "503": {"description": 'not ready (no body; {"error": …} while the model is being reloaded)'},
        "401": _UNAUTHORIZED,
        "404": _NOT_FOUND,
    }
    header = {"name": HEADER_LENGTH, "in": "header", "required": False, "schema": _HEADER_LENGTH}
    encoding = {"name": "Content-Encoding", "in": "header", "required": False, "schema": _CONTENT_ENCODING}
    return {
        "": {"get": _operation("v2_model_metadata", "the model's inputs and outputs", metadata, parameters=[model])},
        "/ready": {"get": _operation("v2_model_ready", "whether the model can infer", ready, parameters=[model])},
        "/infer": {
            "post": _operation(
                "v2_model_infer",
                "the asked outputs of a batch of images or of preprocessed tensors",
                {"200": _INFER_OK, **_INFER_ERRORS},
                parameters=[model, header, encoding],
                requestBody=_INFER_BODY,
            )
        },
    }


def _versioned(item: dict) -> dict:
    """The same operation under …/versions/1, as v2_model_version_…."""
    ((method, operation),) = item.items()
    operation_id = operation["operationId"].replace("v2_model_", "v2_model_version_")
    return {method: {**operation, "operationId": operation_id, "summary": f"{operation['summary']} (version 1)"}}


def v2_paths(model: dict) -> dict:
    """Health, server and model metadata, readiness and infer (service/v2_routes.py); health is open."""
    not_ready = {"200": {"description": "ready (no body)"}, "503": {"description": "not ready (no body)"}}
    paths = {
        f"{PREFIX}/health/live": {
            "get": _operation("v2_server_live", "liveness", {"200": {"description": "alive (no body)"}}, security=[])
        },
        f"{PREFIX}/health/ready": {
            "get": _operation("v2_server_ready", "readiness: every model loaded and warmed up", not_ready, security=[])
        },
        PREFIX: {
            "get": _operation(
                "v2_server_metadata",
                "the server's name, version and protocol extensions",
                {"200": _ok("V2ServerMetadata", "metadata"), "401": _UNAUTHORIZED},
            )
        },
    }
    operations = _model_operations(model)
    for suffix, item in operations.items():
        paths[f"{PREFIX}/models/{{model_name}}{suffix}"] = item
    for suffix, item in operations.items():
        paths[f"{PREFIX}/models/{{model_name}}/versions/{VERSION}{suffix}"] = _versioned(item)
    return paths
