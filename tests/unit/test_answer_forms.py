"""Several poolings, top classes and binary answers (safetensors, npz) on the tiny model through Flask's test client.

Every answer is compared with a direct ONNX Runtime run of the same images; a binary answer must hold exactly the
numbers of the JSON answer, and the rest of the JSON answer beside them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from engine.errors import InvalidInput
from engine.features import FeatureOptions, classifier_layer, parse_options
from engine.search import parse_search_options
from tests.helpers import direct_run, photo_jpeg
from tests.openapi_check import conforms
from tests.unit.tiny_model import LABELS, NAME

FEATURES = "/v1/models/{model_name}/features"
URL = f"/v1/models/{NAME}/features"


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [photo_jpeg("chelsea"), photo_jpeg("coffee"), photo_jpeg("rocket", size=(200, 300))]


def post_json(client, photos: list[bytes], accept: str | None = None, **options):
    import base64

    body = {"inputs": [{"image": base64.b64encode(data).decode(), "name": f"{i}.jpg"} for i, data in enumerate(photos)]}
    headers = {"Accept": accept} if accept else {}
    response = client.post(URL, json={**body, **options}, headers=headers)
    conforms(response, FEATURES, "post")
    return response


def safetensors_metadata(body: bytes) -> dict:
    """The JSON header's __metadata__ (8 bytes little-endian length, then the header)."""
    (length,) = struct.unpack("<Q", body[:8])
    return json.loads(body[8 : 8 + length])["__metadata__"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_several_poolings_in_one_request(client, photos, tiny_session, tiny_manifest):
    response = post_json(client, photos, pooling="avg,max,avg", layers=["stride4", "logits"])
    assert response.status_code == 200, response.text
    body = response.json
    assert body["options"]["pooling"] == "avg,max"  # repeats dropped, order kept; sendable back as it is
    stride4 = next(layer for layer in tiny_manifest.layers if layer.name == "stride4")
    avg, maximum, logits = direct_run(
        tiny_session, tiny_manifest, photos, [stride4.outputs["avg"], stride4.outputs["max"], "logits"]
    )
    for index, result in enumerate(body["results"]):
        assert "features" not in result and set(result["features_by_pooling"]) == {"avg", "max"}
        by_pooling = result["features_by_pooling"]
        np.testing.assert_allclose(by_pooling["avg"]["low"]["stride4"]["values"], avg[index], rtol=1e-6)
        np.testing.assert_allclose(by_pooling["max"]["low"]["stride4"]["values"], maximum[index], rtol=1e-6)
        for pooling in ("avg", "max"):  # a vector has nothing to pool: the same logits at each pooling
            np.testing.assert_allclose(by_pooling[pooling]["high"]["logits"]["values"], logits[index], rtol=1e-6)
    again = post_json(client, photos[:1], **{**body["options"], "layers": ["stride4"]})
    assert set(again.json["results"][0]["features_by_pooling"]) == {"avg", "max"}


def test_top_classes_are_the_softmax_of_the_logits(client, photos, tiny_session, tiny_manifest):
    response = post_json(client, photos, top=3, levels="low")
    assert response.status_code == 200, response.text
    body = response.json
    assert body["options"]["top"] == 3
    (logits,) = direct_run(tiny_session, tiny_manifest, photos, ["logits"])
    probability = softmax(logits)
    for index, result in enumerate(body["results"]):
        assert set(result["features"]) == {"low"}  # top classes do not add the logits layer to the features
        expected = np.argsort(-probability[index], kind="stable")[:3]
        assert [item["index"] for item in result["top"]] == expected.tolist()
        assert [item["label"] for item in result["top"]] == [LABELS[i] for i in expected]
        np.testing.assert_allclose([item["probability"] for item in result["top"]], probability[index][expected], 1e-6)


@pytest.mark.parametrize("top", [0, -1, 11, "three", 2.5, True])
def test_impossible_top_is_refused_before_decoding(client, photos, top):
    response = post_json(client, [b"not an image"], top=top)
    assert response.status_code == 400, response.text
    assert "top" in response.json["detail"]


def test_a_model_without_labels_has_no_top_classes(tiny_manifest):
    unlabelled = dataclasses.replace(tiny_manifest, labels=None, logits_layer=None)
    with pytest.raises(InvalidInput, match="has no labels"):
        classifier_layer(unlabelled, FeatureOptions(top=1))
    assert classifier_layer(unlabelled, FeatureOptions()) is None


def test_pooling_options_parse_and_search_takes_one():
    assert parse_options({"pooling": ["MAX", "none"]}).poolings == ("max", "none")
    assert parse_options({"pooling": "avg , max"}).poolings == ("avg", "max")
    for bad in ({"pooling": "avg,sum"}, {"pooling": ","}, {"pooling": [1]}):
        with pytest.raises(InvalidInput):
            parse_options(bad)
    with pytest.raises(InvalidInput, match="one pooling"):
        parse_search_options({"pooling": "avg,max"})
    with pytest.raises(InvalidInput, match="unknown option 'top'"):
        parse_search_options({"top": 3})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_binary_answers_hold_the_json_numbers_and_its_metadata(client, photos, dtype):
    options = {"pooling": "avg,none", "layers": ["stem", "stride16", "logits"], "normalize": True, "dtype": dtype}
    plain = post_json(client, photos, **options, top=2).json
    safetensors = post_json(client, photos, "application/x-safetensors", **options, top=2)
    npz = post_json(client, photos, "application/x-npz", **options, top=2)
    assert safetensors.headers["Content-Type"] == "application/x-safetensors"
    assert npz.headers["Content-Type"] == "application/x-npz"
    from_safetensors = load_safetensors(safetensors.data)
    archive = np.load(io.BytesIO(npz.data), allow_pickle=False)
    from_npz = {name: archive[name] for name in archive.files if name != "__response__"}
    described = json.loads(safetensors_metadata(safetensors.data)["response"])
    in_npz = json.loads(str(archive["__response__"]))
    assert {**described, "timings_ms": None} == {**in_npz, "timings_ms": None}  # two requests, two timings
    expected_keys = {f"{layer}/{pooling}" for layer in options["layers"] for pooling in ("avg", "none")}
    assert set(from_safetensors) == set(from_npz) == expected_keys | {"top/index", "top/probability"}
    for key, array in from_safetensors.items():
        np.testing.assert_array_equal(array, from_npz[key])
    for key, meta in described["tensors"].items():
        array = from_safetensors[key]
        assert array.dtype == np.dtype(dtype) and len(array) == len(photos)
        for index, result in enumerate(plain["results"]):
            encoded = result["features_by_pooling"][meta["pooling"]][meta["level"]][meta["layer"]]
            assert list(array[index].shape) == encoded["shape"]
            np.testing.assert_array_equal(array[index], np.asarray(encoded["values"], dtype=dtype))
    for index, result in enumerate(plain["results"]):
        assert from_safetensors["top/index"][index].tolist() == [item["index"] for item in result["top"]]
        np.testing.assert_array_equal(
            from_safetensors["top/probability"][index], np.float32([item["probability"] for item in result["top"]])
        )
    # the metadata is the JSON answer without the arrays: same model, options and per-input names and top labels
    assert {key: described[key] for key in ("model", "sha256", "precision", "provider", "options")} == {
        key: plain[key] for key in ("model", "sha256", "precision", "provider", "options")
    }
    assert described["results"] == [{key: r[key] for key in ("index", "name", "top")} for r in plain["results"]]


def test_binary_full_map_costs_about_its_raw_bytes(client, photos):
    response = post_json(client, photos[:1], "application/x-safetensors", layers="stem", pooling="none")
    (array,) = load_safetensors(response.data).values()
    assert array.shape == (1, 4, 32, 32)
    assert len(response.data) < array.nbytes + 2_000  # the header: metadata and one tensor entry


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("application/x-npz;q=0.5, application/x-safetensors", "application/x-safetensors"),
        ("application/json;q=0.1, application/x-npz", "application/x-npz"),
    ],
)
def test_accept_chooses_the_form(client, photos, accept, media_type):
    response = post_json(client, photos[:1], accept, layers="stem")
    assert response.status_code == 200 and response.headers["Content-Type"].split(";")[0] == media_type


def test_an_accept_nobody_serves_is_406_before_any_work(client, photos):
    response = post_json(client, [b"not an image"], "text/html, image/png")
    assert response.status_code == 406, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json["valid"] == ["application/json", "application/x-safetensors", "application/x-npz"]
    assert post_json(client, photos[:1]).status_code == 200


def test_values_past_float16_range_are_refused_not_answered_as_null(client):
    import base64

    tensor = np.full((3, 64, 64), 1e6, dtype="<f4")  # finite in float32 all the way through the tiny network
    body = {
        "inputs": [{"tensor": {"shape": [3, 64, 64], "dtype": "float32", "data": base64.b64encode(tensor).decode()}}]
    }
    as_float32 = client.post(URL, json={**body, "layers": ["stride16"]})
    assert (
        as_float32.status_code == 200
        and np.abs(as_float32.json["results"][0]["features"]["high"]["stride16"]["values"]).max() > 65504
    )
    refused = client.post(URL, json={**body, "layers": ["stride16"], "dtype": "float16"})
    assert refused.status_code == 422 and "float16" in refused.json["detail"] and refused.json["index"] == 0
    assert (
        client.post(URL, json={**body, "layers": ["stride16"], "dtype": "float16", "normalize": True}).status_code
        == 200
    )
