"""The API blueprint: probes, metrics, the OpenAPI document, the model catalogue and feature requests."""

from __future__ import annotations

import time
from dataclasses import asdict

from flask import Blueprint, Response, request

from engine.errors import Unavailable
from engine.features import check_request, extract, parse_options
from engine.registry import LoadedModel
from service import metrics
from service.openapi import openapi_document
from service.request_steps import (
    decode,
    echoed_layers,
    json_response,
    model_named,
    read_inputs,
    ready_model,
    registry,
    served_by,
)
from service.responses import JSON, binary_response, negotiate

api = Blueprint("api", __name__)


def describe(model: LoadedModel, full: bool) -> dict:
    """The catalogue entry of a model: what it computes and where it runs."""
    manifest = model.manifest
    runtime = model.runtime
    body = {
        "name": manifest.name,
        "sha256": manifest.onnx.sha256,
        "precision": manifest.precision,
        "ready": runtime is not None,
        "provider": runtime.provider if runtime else None,
        "levels": {
            level: [lay.name for lay in manifest.layers if lay.level == level] for level in ("low", "mid", "high")
        },
    }
    if not full:
        return body
    body.update(
        providers=runtime.providers if runtime else [],
        warnings=runtime.warnings if runtime else [],
        input={
            "name": manifest.onnx.input,
            "shape": manifest.onnx.input_shape,
            "layout": manifest.onnx.layout,
            "dynamic_batch": manifest.onnx.dynamic_batch,
        },
        preprocess=asdict(manifest.preprocess),
        layers=[
            {
                "name": lay.name,
                "level": lay.level,
                "shape": lay.shape,
                "stride": lay.stride,
                "receptive_field": lay.receptive_field,
                "pooling": sorted(lay.outputs),
                "global_context": lay.global_context,
                "token_grid": lay.token_grid,
            }
            for lay in manifest.layers
        ],
        logits_layer=manifest.logits_layer,
        reload=model.last_reload,  # {"status", "at", "error"}: the latest reload that changed or failed it, or null
        labels=len(manifest.labels) if manifest.labels else 0,
        source=asdict(manifest.source),
        quality=asdict(manifest.quality) if manifest.quality else None,
        verification={
            "passed": manifest.verification.passed,
            "reference": manifest.verification.reference,
            "max_abs_error": manifest.verification.max_abs_error,
        },
    )
    return body


@api.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@api.get("/readyz")
def readyz():
    models = registry()
    if models.failure:
        raise Unavailable(f"loading models failed: {models.failure}")
    if not models.ready.is_set():
        raise Unavailable("models are still loading")
    return json_response({"status": "ready", "models": sorted(models.models)})


@api.get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.exposition(registry().settings.metrics_dir)
    return Response(body, content_type=content_type)


@api.get("/openapi.json")
def openapi():
    return json_response(openapi_document())


@api.get("/v1/models")
def list_models():
    return json_response({"models": [describe(m, full=False) for m in registry().models.values()]})


@api.get("/v1/models/<model_name>")
def get_model(model_name: str):
    return json_response(describe(model_named(model_name), full=True))


@api.post("/v1/models/<model_name>/features")
def features(model_name: str):
    started = time.perf_counter()
    model = ready_model(model_name)
    media_type = negotiate(request)  # 406 before any work
    inputs, raw_options = read_inputs()
    options = parse_options(raw_options)
    check_request(model.manifest, options)  # unknown layers, impossible top classes: before any decoding work
    parsed = time.perf_counter()
    with model.batcher.expecting():  # lets the batcher wait for this request while it decodes
        batch = decode(inputs, model)
        decoded = time.perf_counter()
        answer = extract(model.batcher, model.manifest, batch, options)
    per_input = answer.per_input(options, arrays=media_type == JSON)  # binary: the arrays travel as tensors
    computed = time.perf_counter()
    metrics.IMAGES.labels(model.name).inc(len(inputs))
    body = {
        **served_by(model),
        "options": {
            **echoed_layers(options),
            "normalize": options.normalize,
            "encoding": options.encoding,
            "dtype": options.dtype,
            "top": options.top,
        },
        "results": [
            {"index": i, "name": item.name, **result}
            for i, (item, result) in enumerate(zip(inputs, per_input, strict=True))
        ],
        "timings_ms": {
            "parse": round((parsed - started) * 1e3, 3),
            "decode": round((decoded - parsed) * 1e3, 3),
            "compute": round((computed - decoded) * 1e3, 3),  # queue + ONNX Runtime + normalise + encode
            "total": round((computed - started) * 1e3, 3),
        },
    }
    return json_response(body) if media_type == JSON else binary_response(media_type, answer, body)
