"""Filter and activation-map PNGs, labels and the page: rendering units, then the real model under gunicorn.

The PNG pipeline is checked against a direct ONNX Runtime run (channel choice, map, background); every
error answer is validated against the OpenAPI document.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from engine.conv_filters import NoImageFilters, first_conv, image_filters
from engine.images import load_tensor, preprocess_image
from engine.manifest import Layer, Manifest, OnnxInfo, Preprocess, Source, Verification
from engine.pictures import (
    _VIRIDIS,
    MAP_ALPHA,
    colormap,
    filter_grid,
    filter_grid_size,
    input_pixels,
    maps_grid_size,
    overlay,
    strongest_channels,
)
from service.openapi import openapi_document
from tests.conftest import Server
from tests.openapi_check import conforms
from tests.test_service_http import jpeg

FILTERS = "/v1/models/{model_name}/layers/{layer_name}/filters.png"
MAPS = "/v1/models/{model_name}/layers/{layer_name}/maps.png"
LABELS = "/v1/models/{model_name}/labels"
SPATIAL = ["stem", "stride4", "stride8", "stride16", "stride32", "head"]


def _open_png(response, path: str, method: str) -> Image.Image:
    """A 200 image/png the document promises for this operation, decoded."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert "image/png" in openapi_document()["paths"][path][method]["responses"]["200"]["content"]
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "PNG" and image.mode == "RGB"
    return image


# --- rendering units ------------------------------------------------------------------------------------------


def test_colormap_runs_from_dark_blue_to_yellow():
    colours = colormap(np.array([0.0, 1.0, -3.0, 7.0, 0.5]))
    assert colours.dtype == np.uint8
    assert colours[0].tolist() == _VIRIDIS[0].tolist() == colours[2].tolist()  # clipped below
    assert colours[1].tolist() == _VIRIDIS[-1].tolist() == colours[3].tolist()  # clipped above
    assert colours[4].tolist() == _VIRIDIS[4].tolist()


def test_filter_grid_size_and_sign_preserving_scale():
    weights = np.zeros((10, 3, 5, 5), np.float32)
    weights[0, 0, 0, 0] = 2.0  # red at the top-left weight of filter 0
    weights[0, 2, 0, 0] = -2.0  # no blue there
    grid = filter_grid(weights)
    assert grid.size == filter_grid_size(10, 5, 5) == (8 * (5 * 9 + 2) + 2, 2 * (5 * 9 + 2) + 2)
    pixels = np.asarray(grid)
    assert pixels[2, 2].tolist() == [255, 128, 0]  # weight 2 of max 2 -> full, 0 -> grey, -2 -> none
    assert pixels[2 + 9, 2 + 9].tolist() == [128, 128, 128]  # an all-zero weight (9 px per weight)
    assert pixels[0, 0].tolist() == [24, 24, 24]  # the gap
    bgr = np.asarray(filter_grid(weights, channels="BGR"))
    assert bgr[2, 2].tolist() == [0, 128, 255]  # BGR weights are drawn as RGB


def test_input_pixels_undoes_the_preprocessing():
    preprocess = Preprocess(size=[224, 224], resize=256)
    tensor = preprocess_image(Image.fromarray(np.full((300, 400, 3), (200, 100, 30), np.uint8)), preprocess)
    assert np.abs(input_pixels(tensor, preprocess).astype(int) - (200, 100, 30)).max() <= 1


def test_strongest_channels_and_overlay():
    maps = np.zeros((5, 4, 4), np.float32)
    maps[3] = 2.0
    maps[1, 0, 0] = 16.0  # mean 1.0, peak top-left
    assert [c for c, _ in strongest_channels(maps, 3)] == [3, 1, 0]
    background = np.full((32, 32, 3), 100, np.uint8)
    tile = overlay(background, maps[1], alpha=1.0)
    assert tile[0, 0].tolist() == _VIRIDIS[-1].tolist()  # the peak is yellow
    assert tile[-1, -1].tolist() == _VIRIDIS[0].tolist()  # the floor is dark blue
    assert overlay(background, maps[3], alpha=0.0)[5, 5].tolist() == [100, 100, 100]  # a flat map: just the image


def _tiny_manifest(path: Path, layers: dict[str, str]) -> Manifest:
    return Manifest(
        name="tiny",
        onnx=OnnxInfo(file=path.name, sha256=path.name.ljust(64, "0"), opset=21, input="x", input_shape=[3, 8, 8]),
        source=Source(kind="onnx", origin="test"),
        preprocess=Preprocess(size=[8, 8], resize=8),
        layers=[Layer(n, "low", [4, 8, 8], 1, 3, {"none": t}) for n, t in layers.items()],
        verification=Verification(True, "none", [], "", 0.0, {}),
    )


def test_first_conv_is_found_through_padding_and_stops_at_the_next_conv(tmp_path):
    """x -> Pad -> Conv(w1) -> Relu = a; Conv(a, w2) = b; Add(a, b) = c: only `a` shows w1 as images."""
    w1 = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3)
    w2 = np.ones((4, 4, 1, 1), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Pad", ["x", "pads"], ["padded"]),
            helper.make_node("Conv", ["padded", "w1"], ["conv1"]),
            helper.make_node("Relu", ["conv1"], ["a"]),
            helper.make_node("Conv", ["a", "w2"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["c"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("a", "c")],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")],
    )  # fmt: skip
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    manifest = _tiny_manifest(path, {"early": "a", "residual": "c"})
    conv = first_conv(path, manifest)
    assert conv.layers == ("early",)
    np.testing.assert_array_equal(image_filters(path, manifest, "early"), w1)
    with pytest.raises(NoImageFilters, match="feature maps, not pixels"):
        image_filters(path, manifest, "residual")  # a second Conv feeds it too


# --- the real model under gunicorn ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cat() -> bytes:
    return jpeg("chelsea")


def _maps(server, layer: str, params=None, model="efficientnet_lite0", **kwargs):
    response = requests.post(
        f"{server.url}/v1/models/{model}/layers/{layer}/maps.png", params=params, timeout=60, **kwargs
    )
    if response.status_code != 200:
        conforms(response, MAPS, "post")
    return response


@pytest.mark.integration
def test_filters_png_shows_the_stem_filters_of_the_graph(server, lite0_dir):
    response = requests.get(f"{server.url}/v1/models/efficientnet_lite0/layers/stem/filters.png", timeout=30)
    image = _open_png(response, FILTERS, "get")
    assert image.size == (402, 202) == filter_grid_size(32, 3, 3)
    graph = onnx.load(str(lite0_dir / "model.onnx")).graph
    conv = next(node for node in graph.node if node.op_type == "Conv")
    assert conv.input[0] == "input"
    weights = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == conv.input[1])
    expected = 0.5 + 0.5 * weights[0, :, 0, 0] / np.abs(weights[0]).max()  # filter 0, its top-left weight
    assert np.abs(np.asarray(image)[10, 10] - expected * 255).max() <= 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("layer", "model", "status", "words"),
    [
        ("stride4", "efficientnet_lite0", 400, "feature maps, not pixels"),
        ("logits", "efficientnet_lite0", 400, "feature maps, not pixels"),
        ("nope", "efficientnet_lite0", 404, "has no layer 'nope'"),
        ("stem", "no_such_model", 404, "no model 'no_such_model'"),
    ],
)
def test_filters_png_errors(server, layer, model, status, words):
    response = requests.get(f"{server.url}/v1/models/{model}/layers/{layer}/filters.png", timeout=30)
    assert response.status_code == status
    conforms(response, FILTERS)
    assert words in response.json()["detail"]


@pytest.mark.integration
def test_maps_png_draws_the_strongest_channels_of_a_direct_run(server, cat, lite0_session, lite0_manifest):
    response = _maps(server, "stride8", params={"k": 3}, data=cat, headers={"Content-Type": "image/jpeg"})
    image = _open_png(response, MAPS, "post")
    assert image.size == maps_grid_size(3, 224, 224) == (3 * 228 + 4, 40 + 228 + 4)
    tensor = load_tensor(cat, lite0_manifest.preprocess)
    (maps,) = lite0_session.run([lite0_manifest.layer("stride8").outputs["none"]], {"input": tensor[None]})
    background = input_pixels(tensor, lite0_manifest.preprocess)
    for index, (channel, _) in enumerate(strongest_channels(maps[0], 3)):
        left, top = 4 + index * 228, 44
        expected = overlay(background, maps[0][channel], MAP_ALPHA)
        tile = np.asarray(image)[top + 24 : top + 224, left : left + 224].astype(int)  # below the channel label
        assert np.abs(tile - expected[24:]).max() <= 2, channel  # same channel, same map, same background


@pytest.mark.integration
def test_maps_png_every_spatial_layer_and_input_form(server, cat, lite0_manifest):
    reference = None
    for layer in SPATIAL:
        response = _maps(server, layer, files={"image": ("cat.jpg", cat, "image/jpeg")})
        assert _open_png(response, MAPS, "post").size == (916, 500)  # k = 8 by default
        if layer == "stem":
            reference = np.asarray(Image.open(io.BytesIO(response.content)))
    as_json = _maps(server, "stem", json={"inputs": [{"image": base64.b64encode(cat).decode()}]})
    tensor = load_tensor(cat, lite0_manifest.preprocess).astype("<f4")
    as_tensor = _maps(
        server, "stem",
        json={"inputs": [{"tensor": {"shape": [3, 224, 224], "data": base64.b64encode(tensor.tobytes()).decode()}}]},
    )  # fmt: skip
    for response in (as_json, as_tensor):
        np.testing.assert_array_equal(np.asarray(_open_png(response, MAPS, "post")), reference)
    one = _maps(server, "head", data={"k": "1", "alpha": "0.25"}, files={"image": ("cat.jpg", cat, "image/jpeg")})
    assert _open_png(one, MAPS, "post").size == (228 + 4, 40 + 228 + 4)
    many = _maps(server, "stem", params={"k": 64}, data=cat, headers={"Content-Type": "image/jpeg"})
    assert _open_png(many, MAPS, "post").size == maps_grid_size(32, 224, 224)  # only 32 channels exist


@pytest.mark.integration
@pytest.mark.parametrize(
    ("layer", "params", "body", "status", "words"),
    [
        ("logits", None, "cat", 400, "no spatial map"),
        ("embedding", None, "cat", 400, "no spatial map"),
        ("nope", None, "cat", 404, "has no layer 'nope'"),
        ("stem", {"k": "0"}, "cat", 400, "from 1 to 64"),
        ("stem", {"k": "65"}, "cat", 400, "from 1 to 64"),
        ("stem", {"k": "two"}, "cat", 400, "from 1 to 64"),
        ("stem", {"alpha": "1.5"}, "cat", 400, "from 0 to 1"),
        ("stem", {"alpha": "nan"}, "cat", 400, "from 0 to 1"),
        ("stem", {"pooling": "avg"}, "cat", 400, "unknown option 'pooling'"),
        ("stem", None, "not an image", 422, "image 0"),
        ("stem", None, "", 422, "empty"),
    ],
)
def test_maps_png_errors(server, cat, layer, params, body, status, words):
    data = cat if body == "cat" else body.encode()
    response = _maps(server, layer, params=params, data=data, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


@pytest.mark.integration
def test_maps_png_takes_one_image_only(server, cat):
    two = [("image", ("a.jpg", cat, "image/jpeg")), ("image", ("b.jpg", cat, "image/jpeg"))]
    response = _maps(server, "stem", files=two)
    assert response.status_code == 400
    assert "one image" in response.json()["detail"]
    response = _maps(server, "stem", json={"inputs": [], "k": 3})
    assert response.status_code == 400
    response = _maps(server, "stem", data=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    response = _maps(server, "stem", model="no_such_model", data=cat, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 404


@pytest.mark.integration
def test_labels(server, lite0_manifest):
    response = requests.get(f"{server.url}/v1/models/efficientnet_lite0/labels", timeout=30)
    conforms(response, LABELS)
    body = response.json()
    assert body["layer"] == "logits" and len(body["labels"]) == 1000 and body["labels"][281] == "tabby"
    missing = requests.get(f"{server.url}/v1/models/no_such_model/labels", timeout=30)
    assert missing.status_code == 404
    conforms(missing, LABELS)


@pytest.mark.integration
def test_page_and_assets_open_without_the_key_the_api_does_not(models_dir):
    keyed = Server(models_dir, FEATURES_API_KEY="pictures-key").wait_ready()
    try:
        page = requests.get(f"{keyed.url}/", timeout=30)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "/static/app.js" in page.text
        for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            response = requests.get(f"{keyed.url}/static/{asset}", timeout=30)
            assert response.status_code == 200 and kind in response.headers["Content-Type"]
        denied = requests.get(f"{keyed.url}/v1/models/efficientnet_lite0/labels", timeout=30)
        assert denied.status_code == 401
        conforms(denied, LABELS)
        denied = requests.get(f"{keyed.url}/v1/models/efficientnet_lite0/layers/stem/filters.png", timeout=30)
        assert denied.status_code == 401
        conforms(denied, FILTERS)
        allowed = requests.get(
            f"{keyed.url}/v1/models/efficientnet_lite0/layers/stem/filters.png",
            headers={"Authorization": "Bearer pictures-key"}, timeout=30,
        )  # fmt: skip
        assert _open_png(allowed, FILTERS, "get").size == (402, 202)
    finally:
        keyed.stop()
