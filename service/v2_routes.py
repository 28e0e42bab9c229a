"""The Open Inference Protocol (KServe V2) REST API beside /v1, on the same registry, batcher, limits and key.

A model takes either input, not both: `image`, BYTES [N] (encoded JPEG/PNG/WebP/…, decoded and preprocessed
as the manifest says, as OpenVINO Model Server does), or the ONNX input itself, FP32 [N, 3, H, W] already
preprocessed. Its outputs are the graph's named outputs: every layer's map (`stem`) and pooled vectors
(`stem__avg`, `stem__max`). A request that names none gets the avg-pooled vector of every layer (vector layers
as they are). Only the sub-graph up to the deepest output asked for runs. Errors are `{"error": "…"}`.
"""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, request

from engine.errors import InvalidInput, UnknownName
from engine.features import check_finite, output_name
from engine.inputs import Input
from engine.manifest import Manifest
from service.request_steps import decode, json_response, model_named, ready_model, registry
from service.v2_framing import HEADER_LENGTH, encode_infer_response, parse_infer_request

v2 = Blueprint("v2", __name__)
PREFIX = "/v2"
IMAGE_INPUT = "image"
VERSION = "1"  # one version per model name: a reload replaces it


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
    return json_response({"name": "cnn-features", "version": "1.0.0", "extensions": ["binary_tensor_data"]})


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
    parsed = parse_infer_request(request.get_data(cache=False), request.headers.get(HEADER_LENGTH))
    shapes = output_shapes(manifest)
    wanted = parsed.outputs or [(name, parsed.binary_outputs) for name in default_outputs(manifest)]
    for name, _ in wanted:
        if name not in shapes:
            raise UnknownName(f"model {model_name} has no output {name!r}; see GET /v2/models/{model_name}",
                              valid=list(shapes))  # fmt: skip
    if len(parsed.inputs) != 1:
        raise InvalidInput(f"give one input: {IMAGE_INPUT} (BYTES [N]) or {manifest.onnx.input} (FP32 [N, 3, H, W])")
    (given,) = parsed.inputs
    names = list(dict.fromkeys(name for name, _ in wanted))
    with model.batcher.expecting():
        batch = _batch(given, model, manifest)
        arrays = model.batcher.run(names, batch)
    check_finite(arrays, names)
    by_name = dict(zip(names, arrays, strict=True))
    header = {"model_name": model_name, "model_version": VERSION}
    if parsed.id is not None:
        header["id"] = parsed.id
    body, json_length = encode_infer_response(header, [(name, by_name[name], binary) for name, binary in wanted])
    if json_length is None:
        return Response(body, mimetype="application/json")
    response = Response(body, mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(json_length)
    return response


def _batch(given, model, manifest: Manifest) -> np.ndarray:
    limit = registry().settings.max_images
    if given.name == IMAGE_INPUT:
        if given.datatype != "BYTES" or len(given.shape) != 1:
            raise InvalidInput(f"input {IMAGE_INPUT} must be BYTES of shape [N], one encoded image per element")
        count = len(given.elements)
        if count > limit:
            from engine.errors import TooLarge

            raise TooLarge(f"{count} images in one request; the limit is {limit}", limit=limit)
        return decode([Input(image=data) for data in given.elements], model)
    if given.name != manifest.onnx.input:
        raise UnknownName(f"model {manifest.name} has no input {given.name!r}; its inputs are {IMAGE_INPUT} and "
                          f"{manifest.onnx.input}", valid=[IMAGE_INPUT, manifest.onnx.input])  # fmt: skip
    expected = [len(given.array) if given.array is not None else 0, *manifest.onnx.input_shape]
    if given.datatype != "FP32" or list(given.shape) != expected:
        raise InvalidInput(f"input {given.name} must be FP32 of shape [N, {', '.join(map(str, expected[1:]))}]")
    if len(given.array) > limit:
        from engine.errors import TooLarge

        raise TooLarge(f"{len(given.array)} tensors in one request; the limit is {limit}", limit=limit)
    if not np.isfinite(given.array).all():
        raise InvalidInput(f"input {given.name} contains NaN or infinite values")
    return np.ascontiguousarray(given.array, dtype=np.float32)
