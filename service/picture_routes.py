"""HTTP for looking inside the network: filter and activation-map PNGs, class labels, and the page at `/`.

The page (service/static, served by Flask's own static route) uses only the public API, so it needs no
secrets and is reachable without the API key; every call it makes sends the key the user types in.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from engine.conv_filters import image_filters
from engine.errors import InvalidInput, UnknownName
from engine.features import FeatureOptions, check_finite, select_layers, whole_number
from engine.manifest import Layer
from engine.pictures import MAP_ALPHA, MapsCaption, activation_grid, filter_grid, input_pixels, png_bytes
from engine.registry import LoadedModel
from service.request_steps import check_ready, decode, json_response, model_named, read_inputs

pictures = Blueprint("pictures", __name__)
STATIC = Path(__file__).resolve().parent / "static"
# the page and its assets carry no data, so they open without the API key (the page asks for it)
PAGE_PATHS = frozenset({"/", *(f"/static/{path.name}" for path in STATIC.glob("*") if path.is_file())})
MAPS_OPTIONS = ("k", "alpha")
K_MIN, K_MAX, K_DEFAULT = 1, 64, 8


def png_response(data: bytes) -> Response:
    return Response(data, mimetype="image/png", headers={"Cache-Control": "no-store"})


def _layer(model: LoadedModel, layer_name: str) -> Layer:
    """The named layer; 404 listing the valid names otherwise."""
    return select_layers(model.manifest, FeatureOptions(layers=(layer_name,)))[0]


def maps_options(raw: dict[str, object]) -> tuple[int, float]:
    """(k, alpha) from query, form or JSON fields, each checked with a message that says what is allowed."""
    unknown = sorted(set(raw) - set(MAPS_OPTIONS))
    if unknown:
        raise InvalidInput(
            f"unknown option {unknown[0]!r}; maps.png takes {', '.join(MAPS_OPTIONS)}", valid=list(MAPS_OPTIONS)
        )
    k = whole_number(raw.get("k", K_DEFAULT), "k", K_MIN, K_MAX)
    alpha = _fraction(raw.get("alpha", MAP_ALPHA), "alpha")
    return k, alpha


def _fraction(value, option: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not 0.0 <= number <= 1.0:  # NaN fails this too
        raise InvalidInput(f"option {option}={value!r} must be a number from 0 to 1")
    return number


@pictures.get("/")
def page():
    return send_from_directory(STATIC, "index.html")


@pictures.get("/v1/models/<model_name>/labels")
def labels(model_name: str):
    model = model_named(model_name)
    manifest = model.manifest
    if not manifest.labels:
        raise UnknownName(f"model {model.name} has no class labels")
    return json_response({"model": model.name, "layer": manifest.logits_layer, "labels": manifest.labels})


@pictures.get("/v1/models/<model_name>/layers/<layer_name>/filters.png")
def filters(model_name: str, layer_name: str):
    model = model_named(model_name)
    layer = _layer(model, layer_name)
    weights = image_filters(model.path, model.manifest, layer.name)  # NoImageFilters: 400, saying why
    return png_response(png_bytes(filter_grid(weights, model.manifest.preprocess.channels)))


@pictures.post("/v1/models/<model_name>/layers/<layer_name>/maps.png")
def maps(model_name: str, layer_name: str):
    model = model_named(model_name)
    layer = _layer(model, layer_name)
    if not layer.spatial:
        spatial = [lay.name for lay in model.manifest.layers if lay.spatial]
        raise InvalidInput(
            f"layer {layer.name} is a vector of {layer.shape[0]} values with no spatial map; "
            f"maps exist for {', '.join(spatial)}",
            valid=spatial,
        )
    check_ready()
    inputs, raw_options = read_inputs()
    k, alpha = maps_options(raw_options)  # query-string options are already merged in, conflicts refused
    if len(inputs) != 1:
        raise InvalidInput(f"maps.png draws one image; the request holds {len(inputs)}")
    with model.batcher.expecting():  # joins feature requests in one session.run, like any other
        batch = decode(inputs, model)
        (activations,) = model.batcher.run([layer.outputs["none"]], batch)
    check_finite([activations], [layer.outputs["none"]])
    background = input_pixels(batch[0], model.manifest.preprocess)
    image = activation_grid(background, activations[0], k, MapsCaption(model.name, layer), alpha)
    return png_response(png_bytes(image))
