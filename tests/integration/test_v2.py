"""The Open Inference Protocol through the real tritonclient[http] against a real gunicorn serving Lite0."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import re

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from engine.images import load_tensor
from tests.helpers import photo_jpeg, run_python_examples
from tests.integration.conftest import Server

MODEL = "efficientnet_lite0"
KEY = "v2-test-key"


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as instance:
        yield instance


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [photo_jpeg("chelsea"), photo_jpeg("coffee")]


def images_input(photos: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(photos)], "BYTES")
    tensor.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=binary)
    return tensor


def v1_vectors(server, photos: list[bytes], layer: str, pooling: str = "avg") -> np.ndarray:
    rows = []
    for data in photos:
        answer = requests.post(f"{server.url}/v1/models/{MODEL}/features", params={"layers": layer, "pooling": pooling},
                               data=data, headers={"Content-Type": "image/jpeg"}, timeout=60).json()  # fmt: skip
        (levels,) = answer["results"][0]["features"].values()
        rows.append(np.asarray(levels[layer]["values"], dtype=np.float32))
    return np.stack(rows)


def test_health_metadata_and_readiness(client, lite0_manifest):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    server_metadata = client.get_server_metadata()
    assert server_metadata == {"name": "cnn-features", "version": importlib.metadata.version("cnn-features"),
                               "extensions": ["binary_tensor_data"]}  # fmt: skip
    metadata = client.get_model_metadata(MODEL)
    assert {tensor["name"] for tensor in metadata["inputs"]} == {"image", lite0_manifest.onnx.input}
    outputs = {tensor["name"]: tensor["shape"] for tensor in metadata["outputs"]}
    assert (
        outputs["stem"] == [-1, 32, 112, 112] and outputs["stem__avg"] == [-1, 32] and outputs["logits"] == [-1, 1000]
    )
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("binary_outputs", [True, False])
def test_bytes_images_give_the_v1_numbers(client, server, photos, binary_outputs):
    wanted = [triton.InferRequestedOutput(name, binary_data=binary_outputs) for name in ("stem__avg", "head__max")]
    result = client.infer(MODEL, [images_input(photos)], outputs=wanted)
    np.testing.assert_allclose(result.as_numpy("stem__avg"), v1_vectors(server, photos, "stem"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("head__max"), v1_vectors(server, photos, "head", "max"), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_fp32_tensors_and_full_maps(client, photos, lite0_manifest):
    batch = np.stack([load_tensor(data, lite0_manifest.preprocess) for data in photos])
    tensor = triton.InferInput(lite0_manifest.onnx.input, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    by_tensor = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("stride8")]).as_numpy("stride8")
    by_image = client.infer(MODEL, [images_input(photos)], outputs=[triton.InferRequestedOutput("stride8")])
    assert by_tensor.shape == (2, 40, 28, 28)
    np.testing.assert_allclose(by_tensor, by_image.as_numpy("stride8"), rtol=1e-5, atol=1e-5)


def test_no_outputs_named_gives_every_layers_avg_vector(client, photos, lite0_manifest):
    result = client.infer(MODEL, [images_input(photos[:1])])
    names = {output["name"] for output in result.get_response()["outputs"]}
    assert names == {layer.outputs.get("avg", layer.outputs["none"]) for layer in lite0_manifest.layers}


def test_bytes_in_json_are_base64_and_give_the_binary_numbers(client, photos):
    """tritonclient sends BYTES in JSON as text; base64 is how an image survives that (MLServer's base64 codec)."""
    as_text = triton.InferInput("image", [len(photos)], "BYTES")
    as_text.set_data_from_numpy(np.array([base64.b64encode(p) for p in photos], dtype=np.object_), binary_data=False)
    wanted = [triton.InferRequestedOutput("stride8__avg", binary_data=False)]
    from_json = client.infer(MODEL, [as_text], outputs=wanted).as_numpy("stride8__avg")
    from_binary = client.infer(MODEL, [images_input(photos)], outputs=wanted).as_numpy("stride8__avg")
    np.testing.assert_array_equal(from_json, from_binary)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_as_tritonclient_sends_them(client, photos, algorithm):
    wanted = [triton.InferRequestedOutput("stride16__max", binary_data=True)]
    plain = client.infer(MODEL, [images_input(photos[:1])], outputs=wanted).as_numpy("stride16__max")
    packed = client.infer(MODEL, [images_input(photos[:1])], outputs=wanted, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm).as_numpy("stride16__max")  # fmt: skip
    np.testing.assert_array_equal(plain, packed)


def test_an_unknown_content_encoding_is_415(server):
    answer = requests.post(f"{server.url}/v2/models/{MODEL}/infer", data=b"\x1b\x00", timeout=30,
                           headers={"Content-Encoding": "br"})  # fmt: skip
    assert answer.status_code == 415 and "gzip or deflate" in answer.json()["error"]


def post_infer(server, header: dict | bytes, binary: bytes = b"", model: str = MODEL) -> requests.Response:
    """An infer request framed by hand, to send what no well-behaved client would."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(text))} if binary else {}
    return requests.post(f"{server.url}/v2/models/{model}/infer", data=text + binary, headers=headers, timeout=60)


def image_tensor(count: int = 1, **extra) -> dict:
    return {"name": "image", "shape": [count], "datatype": "BYTES", **extra}


def framed(images: list[bytes]) -> bytes:
    return b"".join(len(data).to_bytes(4, "little") + data for data in images)


@pytest.mark.parametrize(
    ("header", "binary", "status", "expected"),
    [
        ({"inputs": [image_tensor(1, parameters={"binary_data_size": 8})], "outputs": [{"name": "nope"}]},
         framed([b"jpeg"]), 400, "no output 'nope'"),
        ({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0]}]}, b"", 400,
         "needs 12 elements, data holds 1"),
        ({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0] * 12}]}, b"", 400,
         "must be FP32 of shape [N, 3, 224, 224]; got FP32 [1, 3, 2, 2]"),
        ({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "INT64",
                      "parameters": {"binary_data_size": 8 * 3 * 224 * 224}}]},
         bytes(8 * 3 * 224 * 224), 400, "must be FP32"),
        ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, b"", 400,
         "has no input 'pixels'"),
        ({"inputs": [image_tensor(1, data=["not base64!"])]}, b"", 400, "element 0 is not base64"),
        ({"inputs": [image_tensor(1, data=[base64.b64encode(b"no image here").decode()])]}, b"", 422, "image 0"),
        ({"inputs": [image_tensor(0, data=[])]}, b"", 400, "no images"),
        ({"inputs": [image_tensor(9, data=["AA=="] * 9)]}, b"", 413, "limit is 8"),
        ({"inputs": [image_tensor(1, data=["AA=="])], "outputs": [{"name": "logits",
          "parameters": {"classification": 3}}]}, b"", 400, "classification extension is not offered"),
        ({"inputs": [image_tensor(1, data=["AA=="]), image_tensor(1, data=["AA=="])]}, b"", 400, "give one input"),
        ({"inputs": [image_tensor(1, data=["AA=="])], "id": 7}, b"", 400, '"id" must be a string'),
        (b'{"inputs": [', b"", 400, "not valid JSON"),
        ({"inputs": [image_tensor(2, parameters={"binary_data_size": 8})]}, framed([b"jpeg"]), 400,
         "its shape holds 2 elements, its binary data 1"),
        ({"inputs": [image_tensor(1, parameters={"binary_data_size": 8})]}, framed([b"jpeg"])[:-2], 400,
         "binary_data_size 8 is past the end of the body"),
    ],
    ids=["unknown output", "data count", "shape", "datatype", "unknown input", "bad base64", "not an image",
         "no images", "too many images", "classification", "two inputs", "id", "header JSON", "element count",
         "truncated body"],
)  # fmt: skip
def test_bad_requests_get_clear_protocol_errors(server, header, binary, status, expected):
    answer = post_infer(server, header, binary)
    assert answer.status_code == status and answer.headers["Content-Type"] == "application/json", answer.text
    assert list(answer.json()) == ["error"] and expected in answer.json()["error"], answer.text


def test_framing_errors_from_real_client_bodies_and_the_server_keeps_serving(client, server, photos):
    with pytest.raises(InferenceServerException, match="no output 'nope'"):
        client.infer(MODEL, [images_input(photos[:1])], outputs=[triton.InferRequestedOutput("nope")])
    wrong = triton.InferInput("image", [1], "FP32")
    wrong.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException, match="BYTES"):
        client.infer(MODEL, [wrong])
    url = f"{server.url}/v2/models/{MODEL}/infer"
    body, length = triton.InferenceServerClient.generate_request_body([images_input(photos[:1])])
    for data, header, status, expected in [
        (body[:-10], str(length), 400, "past the end"),  # truncated binary body
        (body, str(len(body) + 5), 400, "past the end"),  # header length past the body
        (body, "-3", 400, "not a whole number"),
        (body + b"extra", str(length), 400, "add up to"),  # bytes no input claims
        (body + bytes(3_000_000), str(length), 413, "body limit of 3000000"),  # the shared server's limit
    ]:
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": header}
        answer = requests.post(url, data=data, headers=headers, timeout=30)
        assert answer.status_code == status and expected in answer.json()["error"], answer.text
    missing = requests.post(f"{server.url}/v2/models/no_such_model/infer", data=b"{}", timeout=30)
    assert missing.status_code == 404 and "no_such_model" in missing.json()["error"]
    assert client.infer(MODEL, [images_input(photos[:1])]).as_numpy("stem__avg").shape == (1, 32)


def test_v2_requests_are_counted_like_v1(client, server, photos):
    def images_counted() -> float:
        text = requests.get(f"{server.url}/metrics", timeout=30).text
        return float(re.search(rf'features_images_total{{model="{MODEL}"}} (\S+)', text).group(1))

    before = images_counted()
    client.infer(MODEL, [images_input(photos)], outputs=[triton.InferRequestedOutput("stem__avg")])
    metrics = requests.get(f"{server.url}/metrics", timeout=30).text
    assert 'route="/v2/models/<model_name>/infer",status="200"' in metrics
    assert images_counted() == before + len(photos)


@pytest.fixture(scope="module")
def keyed_server(models_dir):
    instance = Server(models_dir, "--workers", "1", FEATURES_API_KEY=KEY).wait_ready()
    yield instance
    instance.stop()


def test_the_api_key_guards_v2_but_not_its_health_probes(keyed_server, photos):
    with triton.InferenceServerClient(keyed_server.url.removeprefix("http://")) as keyed:
        assert keyed.is_server_live() and keyed.is_server_ready()  # probes stay open, like /healthz
        with pytest.raises(InferenceServerException, match="API key"):
            keyed.get_model_metadata(MODEL)
        with pytest.raises(InferenceServerException, match="API key"):
            keyed.infer(MODEL, [images_input(photos[:1])])
        headers = {"Authorization": f"Bearer {KEY}"}
        assert keyed.is_model_ready(MODEL, headers=headers)
        result = keyed.infer(MODEL, [images_input(photos[:1])], headers=headers)
        assert result.as_numpy("stem__avg").shape == (1, 32)
    refused = requests.get(f"{keyed_server.url}/v2/models/{MODEL}", timeout=30)
    assert refused.status_code == 401 and list(refused.json()) == ["error"]


def test_the_docs_example_runs(server, photos, tmp_path, monkeypatch):
    """docs/v2.md's tritonclient example, in a folder holding its cat.jpg and coffee.jpg, against the test server."""
    (tmp_path / "cat.jpg").write_bytes(photos[0])
    (tmp_path / "coffee.jpg").write_bytes(photos[1])
    monkeypatch.chdir(tmp_path)
    printed = run_python_examples("v2.md", server.url)
    assert printed.splitlines() == ["True True", "(2, 32) (2, 112, 14, 14)"]
