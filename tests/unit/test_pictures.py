"""Filter and activation-map PNGs, labels and the page: rendering units, then the endpoints on the tiny model
through Flask's test client.

The PNG pipeline is checked against a direct ONNX Runtime run (channel choice, map, background); every
error answer is validated against the OpenAPI document. The real model under gunicorn is
tests/integration/test_pictures.py.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from urllib.parse import quote

import numpy as np
import onnx
import pytest
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
from tests.helpers import assert_first_filter_drawn, photo_jpeg
from tests.openapi_check import conforming_png, conforms
from tests.unit.conftest import make_app
from tests.unit.tiny_model import INPUT_SHAPE, LABELS, NAME

FILTERS = "/v1/models/{model_name}/layers/{layer_name}/filters.png"
MAPS = "/v1/models/{model_name}/layers/{layer_name}/maps.png"
LABELS_PATH = "/v1/models/{model_name}/labels"
SPATIAL = ["stem", "stride4", "stride8", "stride16"]
SIZE = INPUT_SHAPE[1]  # the tiny model's input is square
TILE = SIZE + 4  # a map tile and its gap (engine/pictures.py)


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


# --- the endpoints on the tiny model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cat() -> bytes:
    return photo_jpeg("chelsea")


def _maps(client, layer: str, model: str = NAME, **kwargs):
    response = client.post(f"/v1/models/{model}/layers/{layer}/maps.png", **kwargs)
    if response.status_code != 200:
        conforms(response, MAPS, "post")
    return response


def _jpeg_body(data: bytes) -> dict:
    return {"data": data, "content_type": "image/jpeg"}


def _form(*names: str, data: bytes, **fields: str) -> dict:
    return {"data": {"image": [(io.BytesIO(data), name) for name in names], **fields},
            "content_type": "multipart/form-data"}  # fmt: skip


def test_filters_png_shows_the_stem_filters_of_the_graph(client, tiny_dir):
    image = conforming_png(client.get(f"/v1/models/{NAME}/layers/stem/filters.png"), FILTERS, "get")
    assert image.size == filter_grid_size(4, 3, 3) == (4 * (3 * 16 + 2) + 2, 3 * 16 + 2 + 2)
    assert_first_filter_drawn(image, tiny_dir / "model.onnx")


@pytest.mark.parametrize(
    ("layer", "model", "status", "words"),
    [
        ("stride4", NAME, 400, "feature maps, not pixels"),
        ("logits", NAME, 400, "feature maps, not pixels"),
        ("nope", NAME, 404, "has no layer 'nope'"),
        ("stem", "no_such_model", 404, "no model 'no_such_model'"),
    ],
)
def test_filters_png_errors(client, layer, model, status, words):
    response = client.get(f"/v1/models/{model}/layers/{layer}/filters.png")
    assert response.status_code == status
    conforms(response, FILTERS)
    assert words in response.json["detail"]


def test_maps_png_draws_the_strongest_channels_of_a_direct_run(client, cat, tiny_session, tiny_manifest):
    response = _maps(client, "stride4", query_string={"k": 3}, **_jpeg_body(cat))
    image = conforming_png(response, MAPS, "post")
    assert image.size == maps_grid_size(3, SIZE, SIZE) == (3 * TILE + 4, 40 + TILE + 4)
    tensor = load_tensor(cat, tiny_manifest.preprocess)
    (maps,) = tiny_session.run([tiny_manifest.layer("stride4").outputs["none"]], {"input": tensor[None]})
    background = input_pixels(tensor, tiny_manifest.preprocess)
    for index, (channel, _) in enumerate(strongest_channels(maps[0], 3)):
        left, top = 4 + index * TILE, 44
        expected = overlay(background, maps[0][channel], MAP_ALPHA)
        tile = np.asarray(image)[top + 24 : top + SIZE, left : left + SIZE].astype(int)  # below the channel label
        assert np.abs(tile - expected[24:]).max() <= 2, channel  # same channel, same map, same background


def test_maps_png_every_spatial_layer_and_input_form(client, cat, tiny_manifest):
    reference = None
    for layer in SPATIAL:
        response = _maps(client, layer, **_form("cat.jpg", data=cat))
        shown = min(8, tiny_manifest.layer(layer).shape[0])  # k = 8 by default, at most every channel
        assert conforming_png(response, MAPS, "post").size == maps_grid_size(shown, SIZE, SIZE)
        if layer == "stem":
            reference = np.asarray(Image.open(io.BytesIO(response.get_data())))
    as_json = _maps(client, "stem", json={"inputs": [{"image": base64.b64encode(cat).decode()}]})
    tensor = load_tensor(cat, tiny_manifest.preprocess).astype("<f4")
    as_tensor = _maps(
        client, "stem",
        json={"inputs": [{"tensor": {"shape": INPUT_SHAPE, "data": base64.b64encode(tensor.tobytes()).decode()}}]},
    )  # fmt: skip
    for response in (as_json, as_tensor):
        np.testing.assert_array_equal(np.asarray(conforming_png(response, MAPS, "post")), reference)
    one = _maps(client, "stride16", **_form("cat.jpg", data=cat, k="1", alpha="0.25"))
    assert conforming_png(one, MAPS, "post").size == (TILE + 4, 40 + TILE + 4)
    many = _maps(client, "stride16", query_string={"k": 64}, **_jpeg_body(cat))
    assert conforming_png(many, MAPS, "post").size == maps_grid_size(16, SIZE, SIZE)  # only 16 channels exist


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
def test_maps_png_errors(client, cat, layer, params, body, status, words):
    data = cat if body == "cat" else body.encode()
    response = _maps(client, layer, query_string=params, **_jpeg_body(data))
    assert response.status_code == status, response.text
    assert words in response.json["detail"]


@pytest.mark.parametrize("k", ["²", "٣", "１", "1e3", "0x8", "-1", "65"])
def test_maps_png_refuses_integers_that_are_not_plain_ascii_digits(client, cat, k):
    response = client.post(f"/v1/models/{NAME}/layers/stem/maps.png?k={quote(k)}", **_jpeg_body(cat))
    assert response.status_code == 400, response.text[:200]
    assert response.headers["Content-Type"] == "application/problem+json"


def test_maps_png_takes_one_image_only(client, cat):
    response = _maps(client, "stem", **_form("a.jpg", "b.jpg", data=cat))
    assert response.status_code == 400
    assert "one image" in response.json["detail"]
    response = _maps(client, "stem", json={"inputs": [], "k": 3})
    assert response.status_code == 400
    response = _maps(client, "stem", data=b"{}", content_type="text/plain")
    assert response.status_code == 415
    response = _maps(client, "stem", model="no_such_model", **_jpeg_body(cat))
    assert response.status_code == 404


def test_labels(client):
    response = client.get(f"/v1/models/{NAME}/labels")
    conforms(response, LABELS_PATH)
    assert response.json == {"model": NAME, "layer": "logits", "labels": LABELS}
    missing = client.get("/v1/models/no_such_model/labels")
    assert missing.status_code == 404
    conforms(missing, LABELS_PATH)


def test_page_and_assets_open_without_the_key_the_api_does_not(tiny_models):
    keyed = make_app(tiny_models, api_key="pictures-key").test_client()
    with keyed.get("/") as page:  # files are streamed: closing the response closes them
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "/static/app.js" in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        with keyed.get(f"/static/{asset}") as response:
            assert response.status_code == 200 and kind in response.headers["Content-Type"]
    denied = keyed.get(f"/v1/models/{NAME}/labels")
    assert denied.status_code == 401
    conforms(denied, LABELS_PATH)
    denied = keyed.get(f"/v1/models/{NAME}/layers/stem/filters.png")
    assert denied.status_code == 401
    conforms(denied, FILTERS)
    allowed = keyed.get(f"/v1/models/{NAME}/layers/stem/filters.png", headers={"Authorization": "Bearer pictures-key"})
    assert conforming_png(allowed, FILTERS, "get").size == filter_grid_size(4, 3, 3)
