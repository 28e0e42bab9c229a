"""Bad input gets a clear problem+json with the right 4xx, carries the request id, and the service keeps serving."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from engine.settings import Settings
from service.app import create_app
from tests.conftest import REPO, Server, free_port
from tests.openapi_check import conforms
from tests.test_service_http import jpeg

pytestmark = pytest.mark.integration
URL = "/v1/models/efficientnet_lite0/features"


def _png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, "PNG")
    return buffer.getvalue()


def _tensor(shape, dtype="float32", values=None, length_delta=0):
    array = np.zeros(shape, dtype="<f4" if dtype == "float32" else "<f2") if values is None else values
    data = array.tobytes()[: len(array.tobytes()) + length_delta] if length_delta < 0 else array.tobytes()
    return {"inputs": [{"tensor": {"shape": list(shape), "dtype": dtype, "data": base64.b64encode(data).decode()}}]}


CAT = jpeg("chelsea", (320, 240))
CASES = {
    "unknown model": (dict(path="/v1/models/resnet9000/features", files={"image": CAT}), 404, "efficientnet_lite0"),
    "path traversal": (dict(path="/v1/models/..%2F..%2Fetc%2Fpasswd/features", files={"image": CAT}), 404, ""),
    "unknown layer": (dict(files={"image": CAT}, data={"layers": "stride5"}), 404, "stride4"),
    "unknown level": (dict(files={"image": CAT}, data={"levels": "deep"}), 400, "low, mid, high"),
    "unknown pooling": (dict(files={"image": CAT}, data={"pooling": "median"}), 400, "none, avg, max"),
    "unknown encoding": (dict(files={"image": CAT}, data={"encoding": "msgpack"}), 400, "json, base64"),
    "unknown dtype": (dict(files={"image": CAT}, data={"dtype": "int8"}), 400, "float32, float16"),
    "bad normalize": (dict(files={"image": CAT}, data={"normalize": "maybe"}), 400, "true or false"),
    "unknown option": (dict(files={"image": CAT}, data={"pool": "max"}), 400, "options are"),
    "wrong media type": (dict(body=b"hello", content_type="text/plain"), 415, "multipart/form-data"),
    "no content type": (dict(body=b"hello", content_type=""), 415, "not accepted"),
    "body over limit": (dict(body=b"\xff" * 3_500_000, content_type="image/jpeg"), 413, "limit"),
    "too many images": (dict(files=[("image", CAT)] * 9), 413, "limit is 8"),
    "no images": (dict(files={"other": CAT}), 400, "field 'image'"),
    "zero-byte file": (dict(files=[("image", CAT), ("image", ("empty.jpg", b""))]), 422, "image 1 (empty.jpg)"),
    "truncated jpeg": (dict(files={"image": CAT[: len(CAT) // 3]}), 422, "truncated"),
    "not an image": (dict(files={"image": b"%PDF-1.7 definitely a pdf"}), 422, "not a recognised image"),
    "decompression bomb": (dict(files={"image": _png((9000, 9000))}), 422, "above the limit"),
    "malformed json": (dict(body=b'{"inputs": [', content_type="application/json"), 400, "malformed JSON"),
    "json without inputs": (dict(json={"images": []}), 400, '"inputs"'),
    "bad base64": (dict(json={"inputs": [{"image": "!!not base64!!"}]}), 400, "not valid base64"),
    "tensor wrong shape": (dict(json=_tensor((3, 100, 100))), 400, "takes [3, 224, 224]"),
    "tensor wrong dtype": (dict(json=_tensor((3, 224, 224), dtype="int64")), 400, "float32, float16"),
    "tensor dtype not a name": (dict(json=_tensor((3, 224, 224), dtype={})), 400, "float32, float16"),  # was a 500
    "tensor short data": (dict(json=_tensor((3, 224, 224), length_delta=-4)), 400, "needs 602112"),
    "tensor non-finite": (
        dict(json=_tensor((3, 224, 224), values=np.full((3, 224, 224), np.nan, dtype="<f4"))),
        400,
        "NaN",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_problem_json(server, case):
    request_kwargs, status, detail_part = CASES[case]
    kwargs = dict(request_kwargs)
    path = kwargs.pop("path", URL)
    headers = {"X-Request-ID": f"test-{case.replace(' ', '-')}"}
    if "content_type" in kwargs:
        headers["Content-Type"] = kwargs.pop("content_type")
    body = kwargs.pop("body", None)
    response = requests.post(server.url + path, data=body if body is not None else kwargs.pop("data", None),
                             headers=headers, timeout=60, **kwargs)  # fmt: skip
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and detail_part in problem["detail"], problem
    assert problem["request_id"] == headers["X-Request-ID"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.text
    if path == URL:
        conforms(response, "/v1/models/{model_name}/features", "post")
    # the service keeps serving
    assert requests.post(server.url + URL, files={"image": CAT}, data={"levels": "low"}, timeout=60).status_code == 200


def test_one_bad_image_names_its_index(server):
    files = [("image", ("a.jpg", CAT)), ("image", ("b.jpg", CAT)), ("image", ("broken.jpg", b"\xff\xd8\xff garbage"))]
    response = requests.post(server.url + URL, files=files, timeout=60)
    assert response.status_code == 422
    assert response.json()["index"] == 2 and "broken.jpg" in response.json()["detail"]


def test_unknown_route_and_method(server):
    response = requests.get(server.url + "/v2/nothing", timeout=10)
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/problem+json"
    response = requests.get(server.url + URL, timeout=10)
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    assert len(response.headers["X-Request-ID"]) == 32  # generated when the client sends none


def test_requests_before_ready_get_503(models_dir):
    app = create_app(Settings(models_dir=models_dir), load_in_background=False)
    registry = app.extensions["registry"]
    registry.ready.clear()  # as between worker start and the end of warm-up
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.headers["Retry-After"] == "2"
    response = client.post(URL, data=CAT, content_type="image/jpeg")
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    registry.ready.set()
    assert client.post(URL, data=CAT, content_type="image/jpeg").status_code == 200


def test_api_key(models_dir):
    server = Server(models_dir, FEATURES_API_KEY="s3cret-key").wait_ready()
    try:
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        denied = requests.get(server.url + "/v1/models", timeout=10)
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
        conforms(denied, "/v1/models")
        wrong = requests.get(server.url + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        ok = requests.post(server.url + URL, data=CAT, headers={"Authorization": "Bearer s3cret-key",
                           "Content-Type": "image/jpeg"}, timeout=60)  # fmt: skip
        assert ok.status_code == 200
    finally:
        server.stop()


def test_checksum_mismatch_stops_the_server_with_one_line(models_dir, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(models_dir / "efficientnet_lite0", broken / "efficientnet_lite0")
    manifest_path = broken / "efficientnet_lite0" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    env = {
        "FEATURES_MODELS_DIR": str(broken),
        "FEATURES_HOST": "127.0.0.1",
        "FEATURES_PORT": str(free_port()),
        "PATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "service.app:create_app()"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "cannot start" in line]
    assert len(errors) == 1 and "does not match its manifest" in errors[0], result.stderr


def test_missing_models_dir_stops_the_server(tmp_path):
    env = {"FEATURES_MODELS_DIR": str(tmp_path / "none"), "FEATURES_PORT": str(free_port()), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "service.app:create_app()"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "does not exist" in result.stderr
