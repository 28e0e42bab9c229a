"""The service under a real gunicorn on 127.0.0.1 with the real exported EfficientNet-Lite0: the probes, the
catalogue and feature requests from concurrent clients, compared with a direct ONNX Runtime run and validated
against /openapi.json. Every input form and option, on the tiny model through the test client, is
tests/unit/test_app.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from openapi_spec_validator import validate as validate_spec

from tests.helpers import assert_pooled_layers_equal, direct_run, photo_jpeg, top5
from tests.openapi_check import conforms

FEATURES = "/v1/models/{model_name}/features"


@pytest.fixture(scope="module")
def images():
    return {
        "cat": photo_jpeg("chelsea"),
        "coffee": photo_jpeg("coffee"),
        "rocket": photo_jpeg("rocket", size=(200, 300)),
    }


def post(
    server, files=None, data=None, json=None, body=None, content_type=None, params=None, model="efficientnet_lite0"
):
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(
        f"{server.url}/v1/models/{model}/features",
        files=files, data=body if body is not None else data, json=json, headers=headers, params=params, timeout=60,
    )  # fmt: skip
    conforms(response, FEATURES, "post")
    return response


def test_openapi_document_is_valid(server):
    response = requests.get(f"{server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    validate_spec(response.json())


def test_health_ready_and_catalogue(server, lite0_manifest):
    for path, schema_path in (("/healthz", "/healthz"), ("/readyz", "/readyz"), ("/v1/models", "/v1/models")):
        response = requests.get(server.url + path, timeout=10)
        assert response.status_code == 200
        conforms(response, schema_path)
    response = requests.get(f"{server.url}/v1/models/efficientnet_lite0", timeout=10)
    conforms(response, "/v1/models/{model_name}")
    detail = response.json()
    assert detail["provider"] == "CPUExecutionProvider" and detail["providers"] == ["CPUExecutionProvider"]
    assert detail["sha256"] == lite0_manifest.onnx.sha256
    assert [layer["name"] for layer in detail["layers"]] == [layer.name for layer in lite0_manifest.layers]
    stem = detail["layers"][0]
    assert stem == {"name": "stem", "level": "low", "shape": [32, 112, 112], "stride": 2, "receptive_field": 3,
                    "pooling": ["avg", "max", "none"], "global_context": False, "token_grid": False}  # fmt: skip
    assert detail["preprocess"]["mean"] == [127.0, 127.0, 127.0] and detail["labels"] == 1000


def test_multipart_images_all_levels_match_direct_run(server, images, lite0_session, lite0_manifest):
    response = post(server, files=[("image", ("cat.jpg", images["cat"])), ("image", ("rocket.jpg", images["rocket"]))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "efficientnet_lite0" and body["provider"] == "CPUExecutionProvider"
    assert [r["name"] for r in body["results"]] == ["cat.jpg", "rocket.jpg"]
    assert_pooled_layers_equal(body["results"], lite0_session, lite0_manifest, [images["cat"], images["rocket"]])


def test_cat_is_a_cat_through_the_logits_layer(server, images, lite0_manifest):
    response = post(server, files={"image": ("cat.jpg", images["cat"])}, data={"layers": "logits"})
    assert response.status_code == 200
    logits = np.array(response.json()["results"][0]["features"]["high"]["logits"]["values"])
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(top5(logits, lite0_manifest.labels))


def test_concurrent_clients_get_exact_results(server, images, lite0_session, lite0_manifest):
    names = list(images)
    expected = dict(
        zip(names, direct_run(lite0_session, lite0_manifest, list(images.values()), ["head__avg"])[0], strict=True)
    )

    def call(i):
        name = names[i % len(names)]
        response = requests.post(f"{server.url}/v1/models/efficientnet_lite0/features",
                                 files={"image": images[name]}, data={"layers": "head"}, timeout=120)  # fmt: skip
        return name, response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(48)))
    assert [status for _, status, _ in results] == [200] * 48
    for name, _, body in results:
        np.testing.assert_allclose(body["results"][0]["features"]["high"]["head"]["values"], expected[name], atol=1e-5)
