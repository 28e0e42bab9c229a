"""The Open Inference Protocol (KServe V2) REST API beside /v1, on the same registry, batcher, limits and key.

A model takes either input, not both: `image`, BYTES [N] (encoded JPEG/PNG/WebP/…, decoded and preprocessed
as the manifest says, as OpenVINO Model Server does; in a JSON body each element is base64 text, since raw
image bytes are not UTF-8), or the ONNX input itself, FP32 [N, 3, H, W] already preprocessed. Its outputs
are the graph's named outputs: every layer's map (`stem`) and pooled vectors (`stem__avg`, `stem__max`). A
request that names none gets the avg-pooled vector of every layer (vector layers as they are). Only the
sub-graph up to the deepest output asked for runs. Errors are `{"error": "…"}`.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata

import numpy as np
from flask import Blueprint, Response, request

from engine.errors import InvalidInput, TooLarge
from engine.features import check_finite, output_name
from engine.inputs import Input
from engine.manifest import Manifest
from service import metrics
from service.problems import UnsupportedMediaType
from service.request_steps import decode, json_response, model_named, ready_model, registry
from service.v2_framing import (
    CONTENT_ENCODINGS,
    HEADER_LENGTH,
    PREFIX,
    decompressed,
    encode_infer_response,
    parse_infer_request,
)

v2 = Blueprint("v2", __name__)
SERVER = "cnn-features"  # the distribution's name: /v2's server metadata reports its installed version
IMAGE_INPUT = "image"
VERSION = "1"  # one version per model name: a reload replaces it
HEALTH_PATHS = {f"{PREFIX}/health/live", f"{PREFIX}/health/ready"}  # probes: open without the API key


def output_shapes(manifest: Manifest) -> dict[str, list[int]]:
    """Every graph output a client may ask for, with its shape per input."""
    shapes = {}
    for layer in manifest.layers:
        for pooling, name in layer.outputs.items():
            shapes[name] = list(layer.shape) if pooling == "none" else [layer.shape[0]]
    return shapes


def default_outputs(manifest: Manifest) -> list[str]:
    return [output_name(layer, "avg") for layer in manifest.layers]


@v2.get("/v2/health/live")
def live():
    return Response(status=200)


@v2.get("/v2/health/ready")
def ready():
    models = registry()
    return Response(status=200 if models.ready.is_set() and not models.failure else 503)


@v2.get("/v2")
def server_metadata():
    return json_response({"name": SERVER, "version": _server_version(), "extensions": ["binary_tensor_data"]})


def _server_version() -> str:
    try:
        return importlib.metadata.version(SERVER)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@v2.get("/v2/models/<model_name>")
@v2.get(f"/v2/models/<model_name>/versions/{VERSION}")
def model_metadata(model_name: str):
    manifest = model_named(model_name).manifest
    inputs = [
        {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
        {"name": manifest.onnx.input, "datatype": "FP32", "shape": [-1, *manifest.onnx.input_shape]},
    ]
    outputs = [
        {"name": name, "datatype": "FP32", "shape": [-1, *shape]} for name, shape in output_shapes(manifest).items()
    ]
    return json_response({"name": model_name, "versions": [VERSION], "platform": "onnxruntime_onnx",
                          "inputs": inputs, "outputs": outputs})  # fmt: skip


@v2.get("/v2/models/<model_name>/ready")
@v2.get(f"/v2/models/<model_name>/versions/{VERSION}/ready")
def model_ready(model_name: str):
    model = model_named(model_name)
    return Response(status=200 if model.runtime is not None and registry().ready.is_set() else 503)


@v2.post("/v2/models/<model_name>/infer")
@v2.post(f"/v2/models/<model_name>/versions/{VERSION}/infer")
def infer(model_name: str):
    model = ready_model(model_name)
    manifest = model.manifest
    parsed = parse_infer_request(_body(), request.headers.get(HEADER_LENGTH))
    shapes = output_shapes(manifest)
    wanted = parsed.outputs or [(name, parsed.binary_outputs) for name in default_outputs(manifest)]
    for name, _ in wanted:
        if name not in shapes:
            raise InvalidInput(f"model {model_name} has no output {name!r}; see GET /v2/models/{model_name}",
                               valid=list(shapes))  # fmt: skip
    if len(parsed.inputs) != 1:
        raise InvalidInput(f"give one input: {IMAGE_INPUT} (BYTES [N]) or {manifest.onnx.input} (FP32 [N, 3, H, W])")
    (given,) = parsed.inputs
    names = list(dict.fromkeys(name for name, _ in wanted))
    with model.batcher.expecting():
        batch = _batch(given, model, manifest)
        arrays = model.batcher.run(names, batch)
    check_finite(arrays, names)
    metrics.IMAGES.labels(model.name).inc(len(batch))
    by_name = {name: array.astype(np.float32, copy=False) for name, array in zip(names, arrays, strict=True)}
    header = {"model_name": model_name, "model_version": VERSION}
    if parsed.id is not None:
        header["id"] = parsed.id
    body, json_length = encode_infer_response(header, [(name, by_name[name], binary) for name, binary in wanted])
    if json_length is None:
        return Response(body, mimetype="application/json")
    response = Response(body, mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(json_length)
    return response


def _body() -> bytes:
    """The request body, inflated if tritonclient compressed it (Content-Encoding gzip or deflate)."""
    encoding = request.headers.get("Content-Encoding")
    try:
        return decompressed(request.get_data(cache=False), encoding, registry().settings.max_body_bytes)
    except LookupError:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not read; send the body as it is, or as "
                                   f"{' or '.join(CONTENT_ENCODINGS)}") from None  # fmt: skip


def _batch(given, model, manifest: Manifest) -> np.ndarray:
    """The NCHW batch an input stands for: images decoded and preprocessed, or a checked tensor as it is."""
    if given.name == IMAGE_INPUT and (given.datatype == "BYTES" or manifest.onnx.input != IMAGE_INPUT):
        if given.datatype != "BYTES" or len(given.shape) != 1:
            raise InvalidInput(f"input {IMAGE_INPUT} must be BYTES of shape [N], one encoded image per element")
        _check_count(len(given.elements), "images")
        images = [_from_base64(data, index) for index, data in enumerate(given.elements)] if given.in_json \
            else given.elements  # fmt: skip
        return decode([Input(image=data) for data in images], model)
    if given.name != manifest.onnx.input:
        raise InvalidInput(f"model {manifest.name} has no input {given.name!r}; its inputs are {IMAGE_INPUT} "
                           f"(BYTES [N]) and {manifest.onnx.input} (FP32 [N, 3, H, W])")  # fmt: skip
    size = ", ".join(map(str, manifest.onnx.input_shape))
    if given.datatype != "FP32" or list(given.shape[1:]) != list(manifest.onnx.input_shape):
        raise InvalidInput(f"input {given.name} must be FP32 of shape [N, {size}]; got {given.datatype} "
                           f"{given.shape}")  # fmt: skip
    _check_count(given.shape[0], "tensors")
    if not np.isfinite(given.array).all():
        raise InvalidInput(f"input {given.name} contains NaN or infinite values")
    return np.ascontiguousarray(given.array, dtype=np.float32)


def _check_count(count: int, what: str) -> None:
    limit = registry().settings.max_images
    if count == 0:
        raise InvalidInput(f"no {what}: the input's first dimension is 0")
    if count > limit:
        raise TooLarge(f"{count} {what} in one request; the limit is {limit} (FEATURES_MAX_IMAGES)", limit=limit)


def _from_base64(text: bytes, index: int) -> bytes:
    """An image sent inside JSON: its base64 text (standard alphabet), the only way bytes survive JSON."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"input {IMAGE_INPUT}: element {index} is not base64; in a JSON body send each image "
            "base64-encoded, or send it raw with binary_data_size",
            index=index,
        ) from None
