"""Thin HTTP handlers: parse the request, call the core (inputs, features), shape the response."""

from __future__ import annotations

import time
from dataclasses import asdict

import orjson
from flask import Blueprint, Response, current_app, request

from service import metrics
from service.decode_budget import DecodeBudget
from service.errors import NotFound, NotReady
from service.features import extract, parse_options, select_layers
from service.inputs import parse_request, to_batch
from service.openapi import openapi_document
from service.registry import LoadedModel, Registry

api = Blueprint("api", __name__)


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status, mimetype="application/json")


def _registry() -> Registry:
    return current_app.extensions["registry"]


def decode_budget() -> DecodeBudget:
    """This worker's decode budget, shared by its request threads (made in create_app)."""
    return current_app.extensions["decode_budget"]


def _model(name: str) -> LoadedModel:
    models = _registry().models
    if name not in models:
        valid = sorted(models)
        raise NotFound(f"no model {name!r}; models are {', '.join(valid)}", valid=valid)
    return models[name]


def describe(model: LoadedModel, full: bool) -> dict:
    """The catalogue entry of a model: what it computes and where it runs."""
    manifest = model.manifest
    runtime = model.runtime
    body = {
        "name": manifest.name,
        "sha256": manifest.onnx.sha256,
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
            }
            for lay in manifest.layers
        ],
        logits_layer=manifest.logits_layer,
        labels=len(manifest.labels) if manifest.labels else 0,
        source=asdict(manifest.source),
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
    registry = _registry()
    if registry.failure:
        raise NotReady(f"loading models failed: {registry.failure}")
    if not registry.ready.is_set():
        raise NotReady("models are still loading")
    return json_response({"status": "ready", "models": sorted(registry.models)})


@api.get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@api.get("/openapi.json")
def openapi():
    return json_response(openapi_document())


@api.get("/v1/models")
def list_models():
    return json_response({"models": [describe(m, full=False) for m in _registry().models.values()]})


@api.get("/v1/models/<model_name>")
def get_model(model_name: str):
    return json_response(describe(_model(model_name), full=True))


@api.post("/v1/models/<model_name>/features")
def features(model_name: str):
    started = time.perf_counter()
    model = _model(model_name)
    registry = _registry()
    if not registry.ready.is_set():
        raise NotReady("models are still loading; retry shortly", retry_after=2)
    settings = registry.settings
    inputs, raw_options = parse_request(request, settings.max_images)
    options = parse_options(raw_options)
    select_layers(model.manifest, options)  # unknown layers fail before any decoding work
    parsed = time.perf_counter()
    with model.batcher.expecting():  # lets the batcher wait for this request while it decodes
        batch = to_batch(inputs, model.manifest, settings.max_pixels, decode_budget())
        decoded = time.perf_counter()
        results = extract(model.batcher, model.manifest, batch, options)
    computed = time.perf_counter()
    metrics.IMAGES.labels(model.name).inc(len(inputs))
    body = {
        "model": model.name,
        "sha256": model.manifest.onnx.sha256,
        "provider": model.runtime.provider,
        "options": {
            "levels": list(options.levels),
            "layers": list(options.layers) if options.layers else None,
            "pooling": options.pooling,
            "normalize": options.normalize,
            "encoding": options.encoding,
            "dtype": options.dtype,
        },
        "results": [
            {"index": i, "name": item.name, "features": feats}
            for i, (item, feats) in enumerate(zip(inputs, results, strict=True))
        ],
        "timings_ms": {
            "parse": round((parsed - started) * 1e3, 3),
            "decode": round((decoded - parsed) * 1e3, 3),
            "compute": round((computed - decoded) * 1e3, 3),  # queue + ONNX Runtime + normalise + encode
            "total": round((computed - started) * 1e3, 3),
        },
    }
    return json_response(body)
