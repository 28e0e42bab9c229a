"""The service under a real gunicorn on 127.0.0.1 with the real exported EfficientNet-Lite0.

Every input form and option is compared with a direct ONNX Runtime run of the same tensors; every response
is validated against /openapi.json.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from openapi_spec_validator import validate as validate_spec

from engine.images import load_tensor
from tests.conftest import photo, top5
from tests.openapi_check import conforms

pytestmark = pytest.mark.integration
FEATURES = "/v1/models/{model_name}/features"


def jpeg(name: str, size=None, fmt="JPEG") -> bytes:
    image = photo(name)
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images():
    return {"cat": jpeg("chelsea"), "coffee": jpeg("coffee"), "rocket": jpeg("rocket", (200, 300))}


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


def direct(lite0_session, lite0_manifest, image_bytes: list[bytes], outputs: list[str]) -> list[np.ndarray]:
    """What ONNX Runtime gives for the same images without the service in between."""
    batch = np.stack([load_tensor(data, lite0_manifest.preprocess) for data in image_bytes])
    return lite0_session.run(outputs, {"input": batch})


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
                    "pooling": ["avg", "max", "none"], "global_context": False}  # fmt: skip
    assert detail["preprocess"]["mean"] == [127.0, 127.0, 127.0] and detail["labels"] == 1000


def test_multipart_images_all_levels_match_direct_run(server, images, lite0_session, lite0_manifest):
    response = post(server, files=[("image", ("cat.jpg", images["cat"])), ("image", ("rocket.jpg", images["rocket"]))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "efficientnet_lite0" and body["provider"] == "CPUExecutionProvider"
    assert [r["name"] for r in body["results"]] == ["cat.jpg", "rocket.jpg"]
    layers = lite0_manifest.layers
    expected = direct(lite0_session, lite0_manifest, [images["cat"], images["rocket"]],
                      [layer.outputs.get("avg", layer.outputs["none"]) for layer in layers])  # fmt: skip
    for index, result in enumerate(body["results"]):
        assert set(result["features"]) == {"low", "mid", "high"}
        for layer, reference in zip(layers, expected, strict=True):
            got = result["features"][layer.level][layer.name]
            assert got["shape"] == [layer.shape[0]] and got["dtype"] == "float32"
            np.testing.assert_allclose(got["values"], reference[index], rtol=1e-6, atol=1e-6)


def test_cat_is_a_cat_through_the_logits_layer(server, images, lite0_manifest):
    response = post(server, files={"image": ("cat.jpg", images["cat"])}, data={"layers": "logits"})
    assert response.status_code == 200
    logits = np.array(response.json()["results"][0]["features"]["high"]["logits"]["values"])
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(top5(logits, lite0_manifest.labels))


def test_json_base64_images_and_raw_bodies_agree(server, images):
    reference = post(server, files={"image": images["coffee"]}, data={"levels": "mid"}).json()["results"][0]
    as_json = post(server, json={"inputs": [{"image": base64.b64encode(images["coffee"]).decode()}], "levels": ["mid"]})
    assert as_json.status_code == 200
    assert as_json.json()["results"][0]["features"] == reference["features"]
    raw = post(server, body=images["coffee"], content_type="image/jpeg", params={"levels": "mid"})
    assert raw.status_code == 200
    assert raw.json()["results"][0]["features"] == reference["features"]
    assert set(reference["features"]) == {"mid"}


def test_query_options_apply_to_every_body_and_conflicts_are_refused(server, images):
    encoded = base64.b64encode(images["coffee"]).decode()
    for kwargs in ({"json": {"inputs": [{"image": encoded}]}}, {"files": {"image": images["coffee"]}}):
        response = post(server, params={"levels": "low", "pooling": "max"}, **kwargs)
        assert response.status_code == 200
        assert set(response.json()["results"][0]["features"]) == {"low"}
        assert response.json()["options"]["pooling"] == "max"
    conflict = post(server, json={"inputs": [{"image": encoded}], "levels": "mid"}, params={"levels": "low"})
    assert conflict.status_code == 400 and "both in the query string and in the body" in conflict.json()["detail"]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_raw_png_and_webp(server, fmt, lite0_session, lite0_manifest):
    data = jpeg("astronaut", (300, 300), fmt)
    response = post(server, body=data, content_type=f"image/{fmt.lower()}", params={"layers": "stride8"})
    assert response.status_code == 200, response.text
    (expected,) = direct(lite0_session, lite0_manifest, [data], ["stride8__avg"])
    np.testing.assert_allclose(
        response.json()["results"][0]["features"]["mid"]["stride8"]["values"], expected[0], atol=1e-6
    )


def test_preprocessed_tensor_input(server, lite0_session):
    rng = np.random.default_rng(0)
    tensor = rng.standard_normal((3, 224, 224)).astype("<f4")
    spec = {"shape": [3, 224, 224], "dtype": "float32", "data": base64.b64encode(tensor.tobytes()).decode()}
    response = post(server, json={"inputs": [{"tensor": spec}], "layers": ["head", "logits"], "pooling": "max"})
    assert response.status_code == 200, response.text
    head, logits = lite0_session.run(["head__max", "logits"], {"input": tensor[None]})
    high = response.json()["results"][0]["features"]["high"]
    np.testing.assert_allclose(high["head"]["values"], head[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(high["logits"]["values"], logits[0], rtol=1e-6, atol=1e-5)


def test_full_maps_normalised_and_base64_float16(server, images, lite0_session, lite0_manifest):
    (stem,) = direct(lite0_session, lite0_manifest, [images["cat"]], ["stem"])
    response = post(server, files={"image": images["cat"]},
                    data={"layers": "stem", "pooling": "none", "encoding": "base64", "dtype": "float16"})  # fmt: skip
    assert response.status_code == 200
    encoded = response.json()["results"][0]["features"]["low"]["stem"]
    assert encoded["shape"] == [32, 112, 112] and encoded["dtype"] == "float16" and "values" not in encoded
    got = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f2").reshape(encoded["shape"])
    np.testing.assert_allclose(got, stem[0], rtol=1e-3, atol=1e-3)  # float16 resolution

    normalised = post(server, files={"image": images["cat"]}, data={"levels": "high", "normalize": "true"}).json()
    for name, encoded in normalised["results"][0]["features"]["high"].items():
        assert abs(np.linalg.norm(encoded["values"]) - 1) < 1e-5, name
    as_json16 = post(server, files={"image": images["cat"]}, data={"layers": "embedding", "dtype": "float16"}).json()
    values = as_json16["results"][0]["features"]["high"]["embedding"]["values"]
    (embedding,) = direct(lite0_session, lite0_manifest, [images["cat"]], ["embedding"])
    np.testing.assert_allclose(values, embedding[0], rtol=1e-3, atol=1e-3)


def test_concurrent_clients_get_exact_results(server, images, lite0_session, lite0_manifest):
    names = list(images)
    expected = dict(
        zip(names, direct(lite0_session, lite0_manifest, list(images.values()), ["head__avg"])[0], strict=True)
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
