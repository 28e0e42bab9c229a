"""The /v2 part of /openapi.json against the routes Flask serves and the answers they give, on the tiny model.

Every /v2 route is documented under its own template and every answer (JSON, binary, empty, error) is what the
document says for its operation; the generated client and schemathesis check the same against gunicorn.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct

import numpy as np
import pytest
from openapi_spec_validator import validate as validate_spec

from service.openapi import openapi_document
from service.openapi.v2 import INFER_EXAMPLE, TAG
from service.v2_framing import HEADER_LENGTH
from tests.helpers import photo_jpeg
from tests.openapi_check import conforms
from tests.unit.tiny_model import INPUT, INPUT_SHAPE, NAME

INFER = "/v2/models/{model_name}/infer"
METADATA = "/v2/models/{model_name}"


@pytest.fixture(scope="module")
def cat() -> bytes:
    return photo_jpeg("chelsea")


def documented_v2() -> dict[str, dict]:
    return {path: item for path, item in openapi_document()["paths"].items() if path.startswith("/v2")}


def image_request(*images: bytes, **fields) -> dict:
    data = [base64.b64encode(image).decode() for image in images]
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": data}], **fields}


def test_the_document_stays_valid_and_every_v2_route_is_documented_as_served(app):
    validate_spec(openapi_document())
    served = {
        (rule.rule.replace("<model_name>", "{model_name}"), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("v2.")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, item in documented_v2().items() for method in item}
    assert documented == served
    operations = [operation for item in documented_v2().values() for operation in item.values()]
    assert all(operation["tags"] == [TAG] and operation["operationId"].startswith("v2_") for operation in operations)
    assert {tag["name"] for tag in openapi_document()["tags"]} >= {TAG}
    open_operations = {operation["operationId"] for operation in operations if operation.get("security") == []}
    assert open_operations == {"v2_server_live", "v2_server_ready"}  # the rest take the API key, like /v1


def test_metadata_readiness_and_health_answers_conform(client):
    for path, template in [
        ("/v2/health/live", "/v2/health/live"),
        ("/v2/health/ready", "/v2/health/ready"),
        ("/v2", "/v2"),
        (f"/v2/models/{NAME}", METADATA),
        (f"/v2/models/{NAME}/versions/1", "/v2/models/{model_name}/versions/1"),
        (f"/v2/models/{NAME}/ready", "/v2/models/{model_name}/ready"),
        (f"/v2/models/{NAME}/versions/1/ready", "/v2/models/{model_name}/versions/1/ready"),
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
        conforms(response, template)
    metadata = client.get(f"/v2/models/{NAME}").json
    assert metadata["inputs"][1] == {"name": INPUT, "datatype": "FP32", "shape": [-1, *INPUT_SHAPE]}
    unknown = client.get("/v2/models/nope")
    assert unknown.status_code == 404 and set(unknown.json) == {"error"}
    conforms(unknown, METADATA)
    conforms(client.get("/v2/models/nope/ready"), "/v2/models/{model_name}/ready")


def test_infer_answers_conform_in_json_and_binary(client, cat):
    example = client.post(f"/v2/models/{NAME}/infer", json=INFER_EXAMPLE)  # the document's own example
    assert example.status_code == 200, example.json
    conforms(example, INFER, "post")
    answer = client.post(f"/v2/models/{NAME}/infer", json=image_request(cat, id="a"))
    assert answer.status_code == 200, answer.json
    conforms(answer, INFER, "post")
    assert answer.json["id"] == "a" and all("data" in output for output in answer.json["outputs"])

    raw = {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(cat)}}
    asked = {"name": "stem__avg", "parameters": {"binary_data": True}}
    header = json.dumps({"inputs": [raw], "outputs": [asked]}).encode()
    body = header + struct.pack("<I", len(cat)) + cat
    binary = client.post(f"/v2/models/{NAME}/versions/1/infer", data=body, headers={HEADER_LENGTH: str(len(header))},
                         content_type="application/octet-stream")  # fmt: skip
    assert binary.status_code == 200, binary.data
    conforms(binary, "/v2/models/{model_name}/versions/1/infer", "post")
    documented = openapi_document()["paths"][INFER]["post"]["responses"]["200"]
    assert binary.headers["Content-Type"] in documented["content"] and HEADER_LENGTH in documented["headers"]
    length = int(binary.headers[HEADER_LENGTH])
    (output,) = json.loads(binary.data[:length])["outputs"]
    vector = np.frombuffer(binary.data[length:], "<f4")
    assert output["parameters"]["binary_data_size"] == vector.nbytes and output["shape"] == [1, vector.size]


@pytest.mark.parametrize(
    ("request_body", "status"),
    [
        (image_request(b"x", outputs=[{"name": "fc9"}]), 400),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}, 400),
        ({"inputs": []}, 400),
        (image_request(b"not an image"), 422),
        (image_request(*[b"x"] * 9), 413),  # the unit tier allows 8 images
        ({"inputs": [{"name": "image", "shape": [1], "datatype": {}}]}, 400),  # was a 500: found by schemathesis
        ({"inputs": [{"name": "image", "shape": [1], "datatype": ["BYTES"]}]}, 400),
    ],
)
def test_infer_errors_conform_as_v2_errors(client, request_body, status):
    response = client.post(f"/v2/models/{NAME}/infer", json=request_body)
    assert response.status_code == status, response.json
    assert response.headers["Content-Type"] == "application/json" and set(response.json) == {"error"}
    conforms(response, INFER, "post")
    conforms(client.post("/v2/models/nope/infer", json=request_body), INFER, "post")


def test_compressed_bodies_and_unread_encodings_conform(client, cat):
    body = json.dumps(image_request(cat)).encode()
    for encoding, status in (("gzip", 200), ("br", 415)):
        data = gzip.compress(body) if encoding == "gzip" else body
        response = client.post(f"/v2/models/{NAME}/infer", data=data, headers={"Content-Encoding": encoding},
                               content_type="application/json")  # fmt: skip
        assert response.status_code == status, response.json
        conforms(response, INFER, "post")
