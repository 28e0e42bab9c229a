"""Errors as HTTP, through Flask's test client on the tiny model: each bad request gets the right 4xx as a
problem+json carrying the request id, the app keeps serving, and every error kind maps through the one table
(service/problems.py). Start-up failures under gunicorn are tests/integration/test_startup.py.
"""

from __future__ import annotations

import base64
import importlib
import io
import pkgutil

import numpy as np
import pytest
from PIL import Image
from werkzeug.datastructures import MultiDict

import engine
import service
from engine.batcher import BatcherClosed
from engine.conv_filters import NoImageFilters
from engine.decode_budget import DecodeBusy, ImageTooCostly
from engine.errors import (
    Conflict,
    FeaturesError,
    InvalidInput,
    Misconfigured,
    TooLarge,
    Unavailable,
    UnknownName,
    Unprocessable,
)
from engine.files import UnreadableFile
from engine.images import ImageError
from engine.manifest import ManifestError
from engine.runtime import RuntimeClosed
from engine.settings import SettingsError
from service.problems import NotAcceptable, Unauthorized, UnsupportedMediaType, problem, problem_headers, status_of
from service.remote_images import FetchFailed, RefusedUrl
from tests.helpers import encode, photo_jpeg
from tests.openapi_check import conforms
from tests.unit.conftest import MAX_BODY_BYTES, MAX_IMAGES, make_app
from tests.unit.tiny_model import INPUT_SHAPE, NAME

FEATURES = "/v1/models/{model_name}/features"
URL = f"/v1/models/{NAME}/features"
CAT = photo_jpeg("chelsea", size=(320, 240))
TENSOR_BYTES = int(np.prod(INPUT_SHAPE)) * 4


def _files(*items: tuple[str, str, bytes], **fields: str) -> dict:
    """A multipart body for the test client: (field, file name, bytes) per file, plus text fields."""
    body: dict = dict(fields)
    for field, name, data in items:
        body.setdefault(field, []).append((io.BytesIO(data), name))
    return {"data": body, "content_type": "multipart/form-data"}


def _tensor(shape, dtype="float32", values=None, length_delta=0) -> dict:
    array = np.zeros(shape, dtype="<f4" if dtype == "float32" else "<f2") if values is None else values
    data = array.tobytes()[: len(array.tobytes()) + length_delta] if length_delta < 0 else array.tobytes()
    return {"json": {"inputs": [{"tensor": {"shape": list(shape), "dtype": dtype,
                                            "data": base64.b64encode(data).decode()}}]}}  # fmt: skip


def _raw(body: bytes, content_type: str | None) -> dict:
    return {"data": body, "content_type": content_type} if content_type else {"data": body}


CASES = {  # name: (path or None for the features URL, test client keywords, status, a part of the detail)
    "unknown model": ("/v1/models/resnet9000/features", _files(("image", "cat.jpg", CAT)), 404, f"models are {NAME}"),
    "path traversal": ("/v1/models/..%2F..%2Fetc%2Fpasswd/features", _files(("image", "cat.jpg", CAT)), 404, ""),
    "unknown layer": (None, _files(("image", "cat.jpg", CAT), layers="stride5"), 404, "stride4"),
    "unknown level": (None, _files(("image", "cat.jpg", CAT), levels="deep"), 400, "low, mid, high"),
    "unknown pooling": (None, _files(("image", "cat.jpg", CAT), pooling="median"), 400, "none, avg, max"),
    "unknown encoding": (None, _files(("image", "cat.jpg", CAT), encoding="msgpack"), 400, "json, base64"),
    "unknown dtype": (None, _files(("image", "cat.jpg", CAT), dtype="int8"), 400, "float32, float16"),
    "bad normalize": (None, _files(("image", "cat.jpg", CAT), normalize="maybe"), 400, "true or false"),
    "unknown option": (None, _files(("image", "cat.jpg", CAT), pool="max"), 400, "options are"),
    "wrong media type": (None, _raw(b"hello", "text/plain"), 415, "multipart/form-data"),
    "no content type": (None, _raw(b"hello", None), 415, "not accepted"),
    "body over limit": (None, _raw(b"\xff" * 3_500_000, "image/jpeg"), 413, f"limit of {MAX_BODY_BYTES} bytes"),
    "too many images": (None, _files(*[("image", "cat.jpg", CAT)] * (MAX_IMAGES + 1)), 413, f"limit is {MAX_IMAGES}"),
    "no images": (None, _files(("other", "cat.jpg", CAT)), 400, "field 'image'"),
    "zero-byte file": (None, _files(("image", "a.jpg", CAT), ("image", "empty.jpg", b"")), 422, "image 1 (empty.jpg)"),
    "truncated jpeg": (None, _files(("image", "cat.jpg", CAT[: len(CAT) // 3])), 422, "truncated"),
    "not an image": (None, _files(("image", "x.pdf", b"%PDF-1.7 definitely a pdf")), 422, "not a recognised image"),
    "decompression bomb": (None, _files(("image", "bomb.png", encode(Image.new("L", (9000, 9000)), "PNG"))), 422,
                           "above the limit"),
    "malformed json": (None, _raw(b'{"inputs": [', "application/json"), 400, "malformed JSON"),
    "json without inputs": (None, {"json": {"images": []}}, 400, '"inputs"'),
    "bad base64": (None, {"json": {"inputs": [{"image": "!!not base64!!"}]}}, 400, "not valid base64"),
    "tensor wrong shape": (None, _tensor((3, 100, 100)), 400, f"takes {INPUT_SHAPE}"),
    "tensor wrong dtype": (None, _tensor(INPUT_SHAPE, dtype="int64"), 400, "float32, float16"),
    "tensor dtype not a name": (None, _tensor(INPUT_SHAPE, dtype={}), 400, "float32, float16"),  # was a 500
    "tensor short data": (None, _tensor(INPUT_SHAPE, length_delta=-4), 400, f"needs {TENSOR_BYTES}"),
    "tensor non-finite": (None, _tensor(INPUT_SHAPE, values=np.full(INPUT_SHAPE, np.nan, dtype="<f4")), 400, "NaN"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_problem_json(client, case):
    path, kwargs, status, detail_part = CASES[case]
    request_id = f"test-{case.replace(' ', '-')}"
    response = client.post(path or URL, headers={"X-Request-ID": request_id}, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json
    assert problem["status"] == status and detail_part in problem["detail"], problem
    assert problem["request_id"] == request_id == response.headers["X-Request-ID"]
    assert "Traceback" not in response.text
    if path is None:
        conforms(response, FEATURES, "post")
    # the app keeps serving
    assert client.post(URL, data=CAT, content_type="image/jpeg", query_string={"levels": "low"}).status_code == 200


def test_one_bad_image_names_its_index(client):
    body = _files(("image", "a.jpg", CAT), ("image", "b.jpg", CAT), ("image", "broken.jpg", b"\xff\xd8\xff garbage"))
    response = client.post(URL, **body)
    assert response.status_code == 422
    assert response.json["index"] == 2 and "broken.jpg" in response.json["detail"]


def test_unknown_route_and_method(client):
    response = client.get("/v3/nothing")
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/problem+json"
    assert response.json["detail"] == "no route /v3/nothing; see /openapi.json"
    response = client.get("/v2/nothing")  # the Open Inference Protocol's own error form (docs/v2.md)
    assert response.status_code == 404 and response.json == {"error": "no route /v2/nothing; see /openapi.json"}
    response = client.get(URL)
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    assert response.headers["Content-Type"] == "application/problem+json"
    assert len(response.headers["X-Request-ID"]) == 32  # generated when the client sends none


# --- the inputs, counted and checked before any decoding -------------------------------------------------------


def _tensor_input(shape: list, values: np.ndarray | None = None) -> dict:
    data = values.astype("float32").tobytes() if values is not None else b""
    return {"tensor": {"shape": shape, "dtype": "float32", "data": base64.b64encode(data).decode()}}


@pytest.mark.parametrize(
    "shape",
    [[2**40, 2**40, 2**40], [2**62, 4], [1] * 65, [], [3, 224, -224], [3.0, 224, 224]],
    ids=["product overflows int64", "product overflows float", "rank 65", "rank 0", "negative", "float dim"],
)
def test_tensor_shapes_that_overflow_or_make_no_sense_are_400(client, shape):
    response = client.post(URL, json={"inputs": [_tensor_input(shape)]})
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "shape" in response.json["detail"]


def test_an_extreme_but_finite_tensor_is_422_never_null(client):
    huge = np.full(INPUT_SHAPE, 3.0e38, dtype=np.float32)
    response = client.post(URL, json={"inputs": [_tensor_input(INPUT_SHAPE, huge)], "layers": "logits"})
    assert response.status_code == 422, response.text[:300]
    assert "infinity or NaN" in response.json["detail"] and response.json["index"] == 0


def test_the_input_count_is_checked_before_anything_is_decoded(client):
    """Many tiny tensors in a large body: refused from the count alone, without decoding them."""
    many = {"inputs": [{"tensor": {"shape": [1], "data": "AAAAAA=="}}] * 20_000}
    response = client.post(URL, json=many)
    assert response.status_code == 413
    assert response.json["detail"] == f"20000 inputs in one request; the limit is {MAX_IMAGES}"


def test_too_many_form_fields_name_the_form_limit_not_the_body_limit(client):
    fields = MultiDict([("x", "1")] * 2000 + [("image", (io.BytesIO(CAT), "a.jpg"))])
    response = client.post(URL, data=fields, content_type="multipart/form-data")
    assert response.status_code == 413
    detail = response.json["detail"]
    assert "parts" in detail and "body is larger" not in detail, detail


def test_too_many_images_in_a_form_is_413_naming_the_image_limit(client):
    response = client.post(URL, **_files(*[("image", f"{i}.jpg", CAT) for i in range(MAX_IMAGES + 1)]))
    assert response.status_code == 413 and response.json["limit"] == MAX_IMAGES


# --- 401 and 503: an app of their own -------------------------------------------------------------------------


def test_api_key(tiny_models):
    client = make_app(tiny_models, api_key="s3cret-key").test_client()
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    denied = client.get("/v1/models")
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
    assert denied.headers["Content-Type"] == "application/problem+json"
    conforms(denied, "/v1/models")
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.post(URL, data=CAT, content_type="image/jpeg").status_code == 401
    ok = client.post(URL, data=CAT, content_type="image/jpeg", headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200


def test_requests_before_ready_get_503(tiny_models):
    app = make_app(tiny_models)
    registry = app.extensions["registry"]
    registry.ready.clear()  # as between worker start and the end of warm-up
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.headers["Retry-After"] == "2"
    conforms(not_ready, "/readyz")
    response = client.post(URL, data=CAT, content_type="image/jpeg")
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"] == "2"
    conforms(response, FEATURES, "post")
    registry.ready.set()
    assert client.post(URL, data=CAT, content_type="image/jpeg").status_code == 200


def test_a_full_decode_budget_and_a_closed_batcher_answer_503_with_retry_after(tiny_models):
    app = make_app(tiny_models, decode_wait=0)
    client = app.test_client()
    budget = app.extensions["decode_budget"]
    with budget.reserve(budget.total_bytes):  # every byte taken: the decode cannot wait (decode_wait=0)
        busy = client.post(URL, data=CAT, content_type="image/jpeg")
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1, busy.text
    assert busy.json["retry_after"] == int(busy.headers["Retry-After"])
    assert client.post(URL, data=CAT, content_type="image/jpeg").status_code == 200
    app.extensions["registry"].models[NAME].batcher.close()  # as when the worker stops
    stopping = client.post(URL, data=CAT, content_type="image/jpeg")
    assert stopping.status_code == 503 and stopping.headers["Retry-After"] == "2"
    assert "stopping" in stopping.json["detail"]


# --- the one table ----------------------------------------------------------------------------------------------

KINDS = {InvalidInput: 400, Unauthorized: 401, UnknownName: 404, NotAcceptable: 406, Conflict: 409, TooLarge: 413,
         UnsupportedMediaType: 415, Unprocessable: 422, Misconfigured: 500, Unavailable: 503,
         FeaturesError: 500}  # fmt: skip
# every error the core and the HTTP edge define, by the status its kind gives it
ERRORS = {NoImageFilters: 400, UnreadableFile: 400, ImageTooCostly: 413, ImageError: 422, ManifestError: 500,
          SettingsError: 500, DecodeBusy: 503, BatcherClosed: 503, RuntimeClosed: 503, RefusedUrl: 400,
          FetchFailed: 422}  # fmt: skip


def _instance(kind: type[FeaturesError], **facts) -> FeaturesError:
    error = kind.__new__(kind)  # some kinds take no arguments (BatcherClosed, RuntimeClosed)
    FeaturesError.__init__(error, "what went wrong", **facts)
    return error


def _defined_errors() -> set[type]:
    for package in (engine, service):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found, todo = set(), [FeaturesError]
    while todo:
        for kind in todo.pop().__subclasses__():
            if kind.__module__.split(".")[0] in ("engine", "service"):
                found.add(kind)
            todo.append(kind)
    return found


@pytest.mark.parametrize("kind", [*KINDS, *ERRORS], ids=lambda kind: kind.__name__)
def test_status_of_every_error_kind(kind):
    status = {**KINDS, **ERRORS}[kind]
    assert status_of(_instance(kind)) == status
    assert status_of(_instance(kind).about("image 3", index=3)) == status  # naming the input keeps the kind


def test_every_error_of_the_core_and_the_edge_is_in_the_table_above():
    assert _defined_errors() == set(KINDS) - {FeaturesError} | set(ERRORS)


def test_problem_body_and_headers():
    body = problem(422, "not an image", {"index": 2}, "req-1")
    assert body == {"type": "about:blank", "title": "Unprocessable Entity", "status": 422, "detail": "not an image",
                    "index": 2, "request_id": "req-1"}  # fmt: skip
    assert "request_id" not in problem(400, "bad", {}, None)
    assert problem_headers(401, {}) == {"WWW-Authenticate": "Bearer"}
    assert problem_headers(503, {}) == {"Retry-After": "2"} and problem_headers(503, {"retry_after": 7}) == {
        "Retry-After": "7"}  # fmt: skip
    assert problem_headers(422, {"index": 0}) == {}
