"""Filter and activation-map PNGs and labels from the real model under gunicorn: the stem's filters are the graph's
first convolution, the maps those of a direct ONNX Runtime run, the labels ImageNet's. Every other case of these
endpoints, on the tiny model through the test client, is tests/unit/test_pictures.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from engine.images import load_tensor
from engine.pictures import MAP_ALPHA, filter_grid_size, input_pixels, maps_grid_size, overlay, strongest_channels
from tests.helpers import assert_first_filter_drawn, photo_jpeg
from tests.openapi_check import conforming_png, conforms

FILTERS = "/v1/models/{model_name}/layers/{layer_name}/filters.png"
MAPS = "/v1/models/{model_name}/layers/{layer_name}/maps.png"
LABELS = "/v1/models/{model_name}/labels"


@pytest.fixture(scope="module")
def cat() -> bytes:
    return photo_jpeg("chelsea")


def test_filters_png_shows_the_stem_filters_of_the_graph(server, lite0_dir):
    response = requests.get(f"{server.url}/v1/models/efficientnet_lite0/layers/stem/filters.png", timeout=30)
    image = conforming_png(response, FILTERS, "get")
    assert image.size == (402, 202) == filter_grid_size(32, 3, 3)
    assert_first_filter_drawn(image, lite0_dir / "model.onnx")


def test_maps_png_draws_the_strongest_channels_of_a_direct_run(server, cat, lite0_session, lite0_manifest):
    response = requests.post(f"{server.url}/v1/models/efficientnet_lite0/layers/stride8/maps.png", params={"k": 3},
                             data=cat, headers={"Content-Type": "image/jpeg"}, timeout=60)  # fmt: skip
    image = conforming_png(response, MAPS, "post")
    assert image.size == maps_grid_size(3, 224, 224) == (3 * 228 + 4, 40 + 228 + 4)
    tensor = load_tensor(cat, lite0_manifest.preprocess)
    (maps,) = lite0_session.run([lite0_manifest.layer("stride8").outputs["none"]], {"input": tensor[None]})
    background = input_pixels(tensor, lite0_manifest.preprocess)
    for index, (channel, _) in enumerate(strongest_channels(maps[0], 3)):
        left, top = 4 + index * 228, 44
        expected = overlay(background, maps[0][channel], MAP_ALPHA)
        tile = np.asarray(image)[top + 24 : top + 224, left : left + 224].astype(int)  # below the channel label
        assert np.abs(tile - expected[24:]).max() <= 2, channel  # same channel, same map, same background


def test_labels(server, lite0_manifest):
    response = requests.get(f"{server.url}/v1/models/efficientnet_lite0/labels", timeout=30)
    conforms(response, LABELS)
    body = response.json()
    assert body["layer"] == "logits" and len(body["labels"]) == 1000 and body["labels"][281] == "tabby"
    missing = requests.get(f"{server.url}/v1/models/no_such_model/labels", timeout=30)
    assert missing.status_code == 404
    conforms(missing, LABELS)
