"""The steps every blueprint shares, in one place: this worker's registry and decode budget, the model a
path names (ready or not, held until the request ends), the request's inputs and options, their decoding into
one batch, JSON out.
"""

from __future__ import annotations

import numpy as np
import orjson
from flask import Response, current_app, g, request

from engine.decode_budget import DecodeBudget
from engine.errors import Unavailable, UnknownName
from engine.features import FeatureOptions
from engine.inputs import Input, to_batch
from engine.registry import LoadedModel, Registry
from service.inputs import parse_request

RETRY_WHILE_LOADING_S = 2
HOLD_TRIES = 3  # a model retired by a reload between reading `models` and holding it: take its successor


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status, mimetype="application/json")


def served_by(model: LoadedModel) -> dict:
    """What every answer computed by a model says of it: name, sha256, precision and the provider that ran."""
    manifest = model.manifest
    return {"model": model.name, "sha256": manifest.onnx.sha256, "precision": manifest.precision,
            "provider": model.runtime.provider}  # fmt: skip


def echoed_layers(options: FeatureOptions) -> dict:
    """The layer choice a request made, echoed so that it can be sent back as it is (layers null: by level)."""
    layers = list(options.layers) if options.layers else None
    return {"levels": list(options.levels), "layers": layers, "pooling": ",".join(options.poolings)}


def registry() -> Registry:
    """This worker's models (made in create_app)."""
    return current_app.extensions["registry"]


def decode_budget() -> DecodeBudget:
    """This worker's decode budget, shared by its request threads (made in create_app)."""
    return current_app.extensions["decode_budget"]


def model_named(name: str) -> LoadedModel:
    """The model a path names, loaded or not (its catalogue entry says which); UnknownName lists the valid ones.

    Held for the rest of the request (released by `release_models`), so a reload that replaces it meanwhile
    closes it only after this request is done with it.
    """
    for _ in range(HOLD_TRIES):
        models = registry().models  # once: a reload swaps the whole dict
        if name not in models:
            valid = sorted(models)
            raise UnknownName(f"no model {name!r}; models are {', '.join(valid)}", valid=valid)
        model = models[name]
        if model.acquire():
            g.setdefault("held_models", []).append(model)
            return model
    raise Unavailable(f"model {name} is being reloaded; retry shortly", retry_after=RETRY_WHILE_LOADING_S)


def release_models() -> None:
    """Let go of the models this request held (the app's teardown_request calls it, whatever the outcome)."""
    for model in g.pop("held_models", ()):
        model.release()


def check_ready() -> None:
    """Unavailable until this worker has loaded its models."""
    if not registry().ready.is_set():
        raise Unavailable("models are still loading; retry shortly", retry_after=RETRY_WHILE_LOADING_S)


def ready_model(name: str) -> LoadedModel:
    """The named model, once this worker can run it."""
    model = model_named(name)
    check_ready()
    return model


def read_inputs() -> tuple[list[Input], dict[str, object]]:
    """The current request's inputs (counted against the limit) and its raw options, query string included."""
    return parse_request(request, registry().settings)


def decode(inputs: list[Input], model: LoadedModel) -> np.ndarray:
    """One NCHW batch for the model, each image decoded within this worker's budget and pixel limit."""
    return to_batch(inputs, model.manifest, registry().settings.max_pixels, decode_budget())
