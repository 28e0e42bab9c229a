"""The V2 infer body framing against what the real tritonclient writes and reads (its own encoder and decoder)."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
import tritonclient.http as triton

from engine.errors import InvalidInput, TooLarge
from service.v2_framing import decompressed, encode_infer_response, parse_infer_request


def request_body(inputs, outputs=None):
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return body, None if json_size is None else str(json_size)


def test_bytes_images_in_binary_and_fp32_in_json_as_tritonclient_sends_them():
    images = np.array([b"\xff\xd8jpeg one", b"\x89PNG two"], dtype=np.object_)
    encoded = triton.InferInput("image", [2], "BYTES")
    encoded.set_data_from_numpy(images, binary_data=True)
    tensor = triton.InferInput("input", [1, 3, 2, 2], "FP32")
    values = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    tensor.set_data_from_numpy(values, binary_data=False)
    wanted = [
        triton.InferRequestedOutput("stem__avg", binary_data=True),
        triton.InferRequestedOutput("logits", binary_data=False),
    ]
    request = parse_infer_request(*request_body([encoded, tensor], wanted))
    assert request.inputs[0].elements == [b"\xff\xd8jpeg one", b"\x89PNG two"]
    np.testing.assert_array_equal(request.inputs[1].array, values)
    assert request.outputs == [("stem__avg", True), ("logits", False)]


def test_fp32_in_binary():
    tensor = triton.InferInput("input", [2, 3], "FP32")
    values = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    tensor.set_data_from_numpy(values, binary_data=True)
    request = parse_infer_request(*request_body([tensor]))
    np.testing.assert_array_equal(request.inputs[0].array, values)
    assert request.outputs is None


@pytest.mark.parametrize(
    ("cut", "message"),
    [(-1, "past the end"), (-5, "past the end"), (+3, "add up to")],
)
def test_truncated_or_padded_binary_bodies_are_refused(cut, message):
    tensor = triton.InferInput("input", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 3), np.float32), binary_data=True)
    body, length = request_body([tensor])
    body = body[:cut] if cut < 0 else body + b"\0" * cut
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(body, length)


def test_header_length_past_the_body_and_bad_shapes_are_refused():
    with pytest.raises(InvalidInput, match="past the end"):
        parse_infer_request(b'{"inputs": []}', "999")
    with pytest.raises(InvalidInput, match="needs 4 elements"):
        parse_infer_request(b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2]}]}', None)
    with pytest.raises(InvalidInput, match="unknown datatype"):
        parse_infer_request(b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}]}', None)


def test_answers_tritonclient_reads():
    stem = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    logits = np.arange(6, dtype=np.float16).reshape(2, 3)
    body, length = encode_infer_response(
        {"model_name": "m", "model_version": "1", "id": "r1"}, [("stem__avg", stem, True), ("logits", logits, False)]
    )
    result = triton.InferenceServerClient.parse_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("stem__avg"), stem)
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.get_response()["id"] == "r1"


def test_compressed_bodies_inflate_within_the_limit():
    """tritonclient's request_compression_algorithm: gzip, or deflate meaning zlib's format."""
    body = b'{"inputs": []}' * 100
    assert decompressed(gzip.compress(body), "gzip", len(body)) == body
    assert decompressed(zlib.compress(body), "Deflate", len(body)) == body
    assert decompressed(body, None, 0) == body  # identity: the body limit was enforced on the wire
    bomb = gzip.compress(bytes(50_000_000))  # 49 KB that would inflate to 50 MB: stops at the limit
    with pytest.raises(TooLarge, match="inflates past the body limit of 1000000"):
        decompressed(bomb, "gzip", 1_000_000)
    with pytest.raises(InvalidInput, match="cut short"):
        decompressed(gzip.compress(body)[:-12], "gzip", len(body))
    with pytest.raises(InvalidInput, match="not valid gzip"):
        decompressed(b"not gzip at all", "gzip", 100)
    with pytest.raises(LookupError):
        decompressed(body, "br", len(body))
