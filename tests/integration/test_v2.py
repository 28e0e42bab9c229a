"""The Open Inference Protocol through the real tritonclient[http] against a real gunicorn serving Lite0."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from engine.images import load_tensor
from tests.helpers import photo_jpeg

MODEL = "efficientnet_lite0"


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
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
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


def test_protocol_errors_are_clear_and_the_server_keeps_serving(client, server, photos):
    with pytest.raises(InferenceServerException, match="no output 'nope'"):
        client.infer(MODEL, [images_input(photos[:1])], outputs=[triton.InferRequestedOutput("nope")])
    wrong = triton.InferInput("image", [1], "FP32")
    wrong.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException, match="BYTES"):
        client.infer(MODEL, [wrong])
    url = f"{server.url}/v2/models/{MODEL}/infer"
    body, length = triton.InferenceServerClient.generate_request_body([images_input(photos[:1])])
    for data, header, expected in [
        (body[:-10], str(length), "past the end"),  # truncated binary body
        (body, str(len(body) + 5), "past the end"),  # header length past the body
        (b'{"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0]}]}', None, "needs"),
    ]:
        headers = {
            "Content-Type": "application/octet-stream",
            **({"Inference-Header-Content-Length": header} if header else {}),
        }
        answer = requests.post(url, data=data, headers=headers, timeout=30)
        assert answer.status_code == 400 and expected in answer.json()["error"], answer.text
    assert client.infer(MODEL, [images_input(photos[:1])]).as_numpy("stem__avg").shape == (1, 32)
