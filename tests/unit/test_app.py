"""The app through Flask's test client on the tiny model: every input form and option of a feature request.

Each answer is compared with a direct ONNX Runtime run of the same tensors and validated against /openapi.json;
the real model under a real gunicorn is tests/integration/test_service_http.py.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from openapi_spec_validator import validate as validate_spec

from tests.helpers import assert_pooled_layers_equal, direct_run, encode, photo, photo_jpeg
from tests.openapi_check import conforms
from tests.unit.tiny_model import INPUT_SHAPE, LABELS, NAME

FEATURES = "/v1/models/{model_name}/features"
URL = f"/v1/models/{NAME}/features"


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {
        "cat": photo_jpeg("chelsea"),
        "coffee": photo_jpeg("coffee"),
        "rocket": photo_jpeg("rocket", size=(200, 300)),
    }


def form(*images: tuple[str, bytes], **fields: str) -> dict:
    """A multipart body for the test client: each (file name, bytes) in the field 'image', plus text fields."""
    return {"image": [(io.BytesIO(data), name) for name, data in images], **fields}


def post(client, **kwargs):
    """POST to the features endpoint (test client keywords: data, json, content_type, query_string)."""
    response = client.post(URL, **kwargs)
    conforms(response, FEATURES, "post")
    return response


def test_openapi_probes_and_catalogue(client, tiny_manifest):
    openapi = client.get("/openapi.json")
    assert openapi.status_code == 200
    validate_spec(openapi.json)
    for path in ("/healthz", "/readyz", "/v1/models"):
        response = client.get(path)
        assert response.status_code == 200
        conforms(response, path)
    assert client.get("/readyz").json == {"status": "ready", "models": [NAME]}
    response = client.get(f"/v1/models/{NAME}")
    conforms(response, "/v1/models/{model_name}")
    detail = response.json
    assert detail["sha256"] == tiny_manifest.onnx.sha256 and detail["provider"] == "CPUExecutionProvider"
    assert detail["levels"] == {
        "low": ["stem", "stride4"],
        "mid": ["stride8"],
        "high": ["stride16", "embedding", "logits"],
    }
    stride4 = {"name": "stride4", "level": "low", "shape": [8, 16, 16], "stride": 4, "receptive_field": 7,
               "pooling": ["avg", "max", "none"], "global_context": False, "token_grid": False}  # fmt: skip
    assert detail["layers"][1] == stride4
    assert detail["layers"][-1]["pooling"] == ["none"] and detail["labels"] == len(LABELS)
    assert detail["input"] == {"name": "input", "shape": INPUT_SHAPE, "layout": "NCHW", "dynamic_batch": True}


def test_multipart_images_all_levels_match_direct_run(client, images, tiny_session, tiny_manifest):
    response = post(client, data=form(("cat.jpg", images["cat"]), ("rocket.jpg", images["rocket"])))
    assert response.status_code == 200, response.text
    body = response.json
    assert body["model"] == NAME and body["sha256"] == tiny_manifest.onnx.sha256
    assert [(r["index"], r["name"]) for r in body["results"]] == [(0, "cat.jpg"), (1, "rocket.jpg")]
    assert body["options"] == {"levels": ["low", "mid", "high"], "layers": None, "pooling": "avg", "normalize": False,
                               "encoding": "json", "dtype": "float32", "top": None}  # fmt: skip
    assert_pooled_layers_equal(body["results"], tiny_session, tiny_manifest, [images["cat"], images["rocket"]])


def test_json_base64_images_and_raw_bodies_agree(client, images):
    reference = post(client, data=form(("", images["coffee"]), levels="mid")).json["results"][0]
    as_json = post(client, json={"inputs": [{"image": base64.b64encode(images["coffee"]).decode()}], "levels": ["mid"]})
    assert as_json.status_code == 200
    assert as_json.json["results"][0]["features"] == reference["features"]
    raw = post(client, data=images["coffee"], content_type="image/jpeg", query_string={"levels": "mid"})
    assert raw.status_code == 200
    assert raw.json["results"][0]["features"] == reference["features"]
    assert set(reference["features"]) == {"mid"}


def test_query_options_apply_to_every_body_and_conflicts_are_refused(client, images):
    encoded = base64.b64encode(images["coffee"]).decode()
    bodies = ({"json": {"inputs": [{"image": encoded}]}}, {"data": form(("c.jpg", images["coffee"]))},
              {"data": images["coffee"], "content_type": "image/jpeg"})  # fmt: skip
    for kwargs in bodies:
        response = post(client, query_string={"levels": "low", "pooling": "max"}, **kwargs)
        assert response.status_code == 200
        assert set(response.json["results"][0]["features"]) == {"low"}
        assert response.json["options"]["pooling"] == "max"
    conflict = post(client, json={"inputs": [{"image": encoded}], "levels": "mid"}, query_string={"levels": "low"})
    assert conflict.status_code == 400 and "both in the query string and in the body" in conflict.json["detail"]
    in_form = post(client, data=form(("c.jpg", images["coffee"]), levels="mid"), query_string={"levels": "low"})
    assert in_form.status_code == 400 and "'levels'" in in_form.json["detail"]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_raw_png_and_webp(client, fmt, tiny_session, tiny_manifest):
    data = encode(photo("astronaut").resize((300, 300)), fmt)
    response = post(client, data=data, content_type=f"image/{fmt.lower()}", query_string={"layers": "stride8"})
    assert response.status_code == 200, response.text
    (expected,) = direct_run(tiny_session, tiny_manifest, [data], ["stride8__avg"])
    np.testing.assert_allclose(response.json["results"][0]["features"]["mid"]["stride8"]["values"], expected[0],
                               atol=1e-6)  # fmt: skip


def test_preprocessed_tensor_input(client, tiny_session):
    tensor = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype("<f4")
    spec = {"shape": INPUT_SHAPE, "dtype": "float32", "data": base64.b64encode(tensor.tobytes()).decode()}
    response = post(client, json={"inputs": [{"tensor": spec}], "layers": ["stride16", "logits"], "pooling": "max"})
    assert response.status_code == 200, response.text
    head, logits = tiny_session.run(["stride16__max", "logits"], {"input": tensor[None]})
    high = response.json["results"][0]["features"]["high"]
    np.testing.assert_allclose(high["stride16"]["values"], head[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(high["logits"]["values"], logits[0], rtol=1e-6, atol=1e-5)
    half = {**spec, "dtype": "float16", "data": base64.b64encode(tensor.astype("<f2").tobytes()).decode()}
    as_half = post(client, json={"inputs": [{"tensor": half}], "layers": "logits"})
    assert as_half.status_code == 200  # a float16 tensor is widened to float32 before the run
    (expected,) = tiny_session.run(["logits"], {"input": tensor.astype("<f2").astype("<f4")[None]})
    np.testing.assert_allclose(as_half.json["results"][0]["features"]["high"]["logits"]["values"], expected[0],
                               rtol=1e-6, atol=1e-5)  # fmt: skip


def test_levels_layers_and_pooling_choose_what_is_returned(client, images, tiny_session, tiny_manifest):
    levels = post(client, data=images["cat"], content_type="image/jpeg", query_string={"levels": "high,low"})
    features = levels.json["results"][0]["features"]
    assert {level: list(layers) for level, layers in features.items()} == {
        "low": ["stem", "stride4"], "high": ["stride16", "embedding", "logits"]}  # fmt: skip
    layers = post(client, json={"inputs": [{"image": base64.b64encode(images["cat"]).decode()}],
                                "layers": "logits, stem, stem", "levels": "mid"})  # fmt: skip
    features = layers.json["results"][0]["features"]  # layers override levels, come back in depth order, once
    assert {level: list(by_name) for level, by_name in features.items()} == {"low": ["stem"], "high": ["logits"]}
    assert layers.json["options"]["layers"] == ["logits", "stem"]
    for pooling in ("max", "none"):
        response = post(client, data=images["cat"], content_type="image/jpeg",
                        query_string={"layers": "stride8,embedding", "pooling": pooling})  # fmt: skip
        got = response.json["results"][0]["features"]
        name = tiny_manifest.layer("stride8").outputs[pooling]
        stride8, embedding = direct_run(tiny_session, tiny_manifest, [images["cat"]], [name, "embedding"])
        assert got["mid"]["stride8"]["shape"] == list(stride8.shape[1:])  # [8] pooled, [8, 8, 8] as maps
        np.testing.assert_allclose(got["mid"]["stride8"]["values"], stride8[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got["high"]["embedding"]["values"], embedding[0], rtol=1e-6, atol=1e-6)


def test_full_maps_normalised_and_base64_float16(client, images, tiny_session, tiny_manifest):
    (stem,) = direct_run(tiny_session, tiny_manifest, [images["cat"]], ["stem"])
    response = post(client, data=form(("cat.jpg", images["cat"]), layers="stem", pooling="none", encoding="base64",
                                      dtype="float16"))  # fmt: skip
    assert response.status_code == 200
    encoded = response.json["results"][0]["features"]["low"]["stem"]
    assert encoded["shape"] == [4, 32, 32] and encoded["dtype"] == "float16" and "values" not in encoded
    got = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f2").reshape(encoded["shape"])
    np.testing.assert_allclose(got, stem[0], rtol=1e-3, atol=1e-3)  # float16 resolution

    as_float32 = post(client, data=images["cat"], content_type="image/jpeg",
                      query_string={"layers": "stem", "pooling": "none", "encoding": "base64"}).json  # fmt: skip
    encoded = as_float32["results"][0]["features"]["low"]["stem"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded["data"]), "<f4").reshape(4, 32, 32), stem[0])

    normalised = post(client, data=form(("c.jpg", images["cat"]), levels="high", normalize="true")).json
    for name, encoded in normalised["results"][0]["features"]["high"].items():
        assert abs(np.linalg.norm(encoded["values"]) - 1) < 1e-5, name
    maps = post(client, json={"inputs": [{"image": base64.b64encode(images["cat"]).decode()}], "layers": ["stem"],
                              "pooling": "none", "normalize": True}).json  # fmt: skip
    values = np.asarray(maps["results"][0]["features"]["low"]["stem"]["values"])
    lit = (stem[0] > 0).any(axis=0)  # a position where ReLU left every channel at 0 stays 0, not NaN
    assert lit.mean() > 0.5
    np.testing.assert_allclose(np.linalg.norm(values, axis=0), lit.astype(np.float32), rtol=1e-5)  # per position
    as_json16 = post(client, data=form(("c.jpg", images["cat"]), layers="embedding", dtype="float16")).json
    values = as_json16["results"][0]["features"]["high"]["embedding"]["values"]
    (embedding,) = direct_run(tiny_session, tiny_manifest, [images["cat"]], ["embedding"])
    np.testing.assert_allclose(values, embedding[0], rtol=1e-3, atol=1e-3)


def test_echoed_options_can_be_sent_back_and_null_means_the_default(client, images):
    encoded = base64.b64encode(images["rocket"]).decode()
    first = post(client, json={"inputs": [{"image": encoded}], "levels": ["low"], "dtype": "float16"}).json
    again = post(client, json={"inputs": [{"image": encoded}], **first["options"]})  # "layers": null among them
    assert again.status_code == 200, again.text
    assert again.json["options"] == first["options"] and again.json["results"] == first["results"]
    nulls = {option: None for option in ("levels", "layers", "pooling", "normalize", "encoding", "dtype")}
    defaults = post(client, json={"inputs": [{"image": encoded}], **nulls})
    assert defaults.json["options"] == post(client, json={"inputs": [{"image": encoded}]}).json["options"]


def test_timings_and_request_ids(client, images):
    response = client.post(URL, data=images["cat"], content_type="image/jpeg", headers={"X-Request-ID": "abc-1"})
    assert response.headers["X-Request-ID"] == "abc-1"
    timings = response.json["timings_ms"]
    assert set(timings) == {"parse", "decode", "compute", "total"} and timings["total"] >= timings["compute"] >= 0
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32 and generated != client.get("/healthz").headers["X-Request-ID"]


def test_an_image_part_without_a_filename_is_named_not_ignored(client, images):
    response = post(client, data={"image": "not a file", "levels": "low"}, content_type="multipart/form-data")
    assert response.status_code == 400 and "has no filename" in response.json["detail"]
    stray = {"image": [(io.BytesIO(images["cat"]), "cat.jpg"), "stray text"]}  # a file part and a text part
    both = post(client, data=stray, content_type="multipart/form-data")
    assert both.status_code == 400 and "has no filename" in both.json["detail"]
