"""The Python client (features_client) against a real gunicorn serving the real EfficientNet-Lite0.

Its answers equal the server's own JSON; binary (safetensors, npz) and JSON answers agree to the bit; a batch over
the server's input limit is split and merged in order; retries are seen through a small proxy on 127.0.0.1 that
answers 503/429 or drops the connection a given number of times before passing requests on; docs/client.md's
example runs as written.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import features_client.client
from engine.images import load_tensor
from engine.settings import Settings
from extract import run
from features_client import (
    BadRequest,
    FeaturesClient,
    FeaturesClientError,
    FeaturesConnectionError,
    FeaturesHTTPError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from features_client.results import NPZ
from tests.helpers import REPO, encode, free_port, photo_jpeg, run_python_examples
from tests.integration.conftest import Server

pytestmark = pytest.mark.integration
MODEL = "efficientnet_lite0"
KEY = "client-test-key"
CATS = {"tabby", "tiger cat", "Egyptian cat"}
MAX_BODY = 300_000  # the strict server's body limit: the five photos fit in one request, 530 kB of noise does not


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Five photos as JPEG files (one of them twice, at another size), in the order the tests send them."""
    folder = tmp_path_factory.mktemp("photos")
    made = [("chelsea", None), ("coffee", None), ("rocket", (200, 300)), ("astronaut", None), ("chelsea", (240, 160))]
    paths = []
    for number, (name, size) in enumerate(made):
        path = folder / f"{number}_{name}.jpg"
        path.write_bytes(photo_jpeg(name, size=size))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def client(server):
    with FeaturesClient(server.url) as instance:
        yield instance


@pytest.fixture(scope="module")
def index_dir(photos, models_dir, tmp_path_factory) -> Path:
    """A search index of the photos, written by batch extraction (docs/search.md)."""
    root = tmp_path_factory.mktemp("index")
    settings = Settings(models_dir=models_dir)
    run([photos[0].parent], MODEL, root / "features", settings=settings, index=str(root / "index"), progress=False)
    return root / "index"


@pytest.fixture(scope="module")
def strict(models_dir, index_dir):
    """A server with an API key, 2 inputs and MAX_BODY bytes per request and the photos' index, waited for by
    the client itself (connection refused, then 503 while loading): (server, /readyz body)."""
    server = Server(models_dir, FEATURES_MAX_IMAGES="2", FEATURES_MAX_BODY_BYTES=str(MAX_BODY), FEATURES_API_KEY=KEY,
                    FEATURES_INDEX=str(index_dir))  # fmt: skip
    try:
        with FeaturesClient(server.url) as anonymous:
            readiness = anonymous.wait_ready(timeout=120)
        yield server, readiness
    finally:
        server.stop()


def test_the_package_needs_nothing_of_the_server():
    """A user installs it to call the service from anywhere: no Flask, ONNX Runtime, torch, engine or service."""
    code = "import sys, features_client; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert not {"flask", "onnxruntime", "torch", "engine", "service", "extract"} & set(loaded.stdout.split())


def test_probes_catalogue_and_labels(client, lite0_manifest):
    assert client.health() == {"status": "ok"} and client.ready()
    assert [entry["name"] for entry in client.models()] == [MODEL]
    detail = client.model(MODEL)
    assert detail["sha256"] == lite0_manifest.onnx.sha256 and detail["labels"] == 1000
    assert client.labels(MODEL) == lite0_manifest.labels


def test_features_of_photos_equal_the_servers_json_answer(client, server, photos, lite0_manifest):
    files = [("image", (path.name, path.read_bytes())) for path in photos[:3]]
    raw = requests.post(f"{server.url}/v1/models/{MODEL}/features", files=files, data={"pooling": "max"}, timeout=120)
    assert raw.status_code == 200, raw.text
    expected = raw.json()
    result = client.features(photos[:3], MODEL, pooling="max")  # paths; a safetensors answer
    assert len(result) == 3 and result.names == [path.name for path in photos[:3]]
    for field in ("model", "sha256", "precision", "provider"):
        assert getattr(result, field) == expected[field]
    assert result.layers == [layer.name for layer in lite0_manifest.layers] and result.poolings == ["max"]
    for row, answer in enumerate(expected["results"]):
        for level, layers in answer["features"].items():
            for layer, encoded in layers.items():
                assert result.tensors[f"{layer}/max"] == {"layer": layer, "level": level, "pooling": "max"}
                served = np.asarray(encoded["values"], dtype=np.float32)
                assert result.layer(layer).dtype == np.float32
                assert np.array_equal(result.layer(layer)[row], served), (row, layer)


def test_binary_and_json_answers_agree_exactly(client, photos, monkeypatch):
    """The same request as safetensors, npz and JSON (base64): the same arrays, dtypes, top classes, metadata."""
    options = {"levels": "mid,high", "pooling": "avg,max", "top": 5, "dtype": "float16", "normalize": True}
    names = ["a", "b", "c", "d", "e"]
    safetensors = client.features(photos, MODEL, names=names, **options)
    as_json = client.features(photos, MODEL, names=names, binary=False, **options)
    monkeypatch.setattr(features_client.client, "BINARY", NPZ)  # what a client without safetensors asks for
    as_npz = client.features(photos, MODEL, names=names, **options)
    assert safetensors.layers == ["stride8", "stride16", "stride32", "head", "embedding", "logits"]
    for other in (as_json, as_npz):
        assert list(other.arrays) == list(safetensors.arrays)
        for key, array in safetensors.arrays.items():
            assert array.dtype == other.arrays[key].dtype == np.float16 and array.shape[0] == 5
            assert np.array_equal(array, other.arrays[key]), key
        assert other.top == safetensors.top and other.tensors == safetensors.tensors
        assert other.names == names and other.options == safetensors.options
    unit = safetensors.layer("embedding", "max").astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-3)  # normalize, in float16


def test_several_poolings_and_top_classes(client, photos, lite0_manifest):
    result = client.features(photos[:2], MODEL, levels="high", pooling=["avg", "max"], top=5)
    assert result.options["pooling"] == "avg,max" and result.options["top"] == 5
    with pytest.raises(KeyError, match="poolings avg, max; name one"):
        result.layer("head")
    assert (result.layer("head", "max") >= result.layer("head", "avg")).all()  # the largest is never below the mean
    logits = result.layer("logits", "avg")
    assert {best.label for best in result.top[0][:3]} & CATS
    for row, classes in enumerate(result.top):
        assert len(classes) == 5 and [c.probability for c in classes] == sorted(c.probability for c in classes)[::-1]
        assert classes[0].index == int(np.argmax(logits[row]))
        assert all(c.label == lite0_manifest.labels[c.index] for c in classes)
    assert client.features(photos[:1], MODEL, layers="embedding").top is None


def test_tensors_and_data_urls_in_and_inputs_checked_before_sending(client, photos, lite0_manifest):
    tensor = load_tensor(photos[0].read_bytes(), lite0_manifest.preprocess)
    data_url = "data:image/jpeg;base64," + base64.b64encode(photos[0].read_bytes()).decode()
    inputs = [tensor, photos[0], data_url, tensor.astype(np.float16)]
    result = client.features(inputs, MODEL, layers="embedding")  # in JSON: tensors, a base64 image, a URL
    assert result.names == [None, photos[0].name, None, None]  # tensors and URLs unnamed unless names= says
    rows = result.layer("embedding")
    np.testing.assert_allclose(rows[0], rows[1], rtol=1e-5, atol=1e-6)
    assert np.array_equal(rows[2], rows[1])  # the same bytes, decoded by the server
    np.testing.assert_allclose(rows[3], rows[1], rtol=0.05, atol=0.05)  # the pixels rounded to float16
    batch = client.features(np.stack([tensor, tensor]), MODEL, layers="embedding", names=["x", "y"])
    assert batch.names == ["x", "y"] and np.array_equal(batch.layer("embedding")[0], batch.layer("embedding")[1])
    with pytest.raises(TypeError, match="float tensors"):
        client.features([np.zeros((224, 224, 3), dtype=np.uint8)], MODEL)
    with pytest.raises(ValueError, match="2 names for 1 images"):
        client.features(photos[:1], MODEL, names=["a", "b"])
    with pytest.raises(FileNotFoundError):
        client.features([photos[0].parent / "missing.jpg"], MODEL)


def test_a_batch_over_the_servers_limit_is_split_and_merged_in_order(client, strict, photos):
    server, readiness = strict
    assert readiness == {"status": "ready", "models": [MODEL]}
    keyed = FeaturesClient(server.url, api_key=KEY)
    refused_before = server.output().count("-> 413")
    result = keyed.features(photos, MODEL, layers=["stem", "embedding"])  # 5 inputs, 2 a request: 413, then 2+2+1
    assert result.names == [path.name for path in photos] and result.indices.tolist() == [0, 1, 2, 3, 4]
    assert [entry["index"] for entry in result.metadata["results"]] == [0, 1, 2, 3, 4]
    assert keyed.max_inputs == 2 and server.output().count("-> 413") == refused_before + 1
    whole = client.features(photos, MODEL, layers=["stem", "embedding"])  # the shared server: one request
    for key, array in whole.arrays.items():
        np.testing.assert_allclose(result.arrays[key], array, rtol=1e-5, atol=1e-6)
    again = keyed.features(photos, MODEL, layers="embedding")
    assert len(again) == 5 and server.output().count("-> 413") == refused_before + 1  # the limit was kept


def test_one_input_too_large_raises_with_its_index_or_is_left_out(strict, photos):
    server, _ = strict
    noise = np.random.default_rng(0).integers(0, 256, (420, 420, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")  # 530 kB: over the body limit on its own
    with FeaturesClient(server.url, api_key=KEY) as keyed:
        with pytest.raises(TooLarge) as raised:
            keyed.features([photos[0], photos[1], big], MODEL, layers="embedding")
        assert raised.value.index == 2 and raised.value.limit == MAX_BODY and "body limit" in raised.value.detail
        kept = keyed.features([photos[0], big, b"not an image", photos[1]], MODEL, layers="embedding", skip_bad=True)
    assert kept.indices.tolist() == [0, 3] and kept.names == [photos[0].name, photos[1].name]
    assert kept.layer("embedding").shape == (2, 1280)
    assert {index: type(error) for index, error in kept.failed.items()} == {1: TooLarge, 2: Unprocessable}
    assert "not a recognised image format" in kept.failed[2].detail


def test_search_finds_each_photo_and_splits_too(strict, photos):
    server, _ = strict
    with FeaturesClient(server.url, api_key=KEY) as keyed:
        found = keyed.search(photos, MODEL, layers="stem,embedding", k=2)
    assert len(found) == 5 and [r["name"] for r in found.metadata["results"]] == [p.name for p in photos]
    for path, neighbours in zip(photos, found.layer("embedding"), strict=True):
        assert neighbours[0].path == str(path) and neighbours[0].score == pytest.approx(1, abs=1e-3)
    assert set(found.neighbours[0]) == {"stem", "embedding"}


def test_errors_are_typed_with_the_servers_problem(strict, photos):
    server, _ = strict
    with FeaturesClient(server.url) as anonymous:
        assert anonymous.health() == {"status": "ok"}  # open without a key
        with pytest.raises(Unauthorized) as raised:
            anonymous.models()
    assert raised.value.status == 401 and "API key" in raised.value.detail and raised.value.request_id
    with FeaturesClient(server.url, api_key=KEY) as keyed:
        with pytest.raises(NotFound) as unknown:
            keyed.features(photos[:1], "resnet50")
        assert unknown.value.valid == [MODEL] and unknown.value.title == "Not Found"
        with pytest.raises(NotFound, match="has no layer 'stride7'"):
            keyed.features(photos[:1], MODEL, layers="stride7")
        with pytest.raises(BadRequest) as bad:
            keyed.features(photos[:1], MODEL, pooling="median")
        assert bad.value.valid == ["none", "avg", "max"] and isinstance(bad.value, FeaturesHTTPError)
        with pytest.raises(BadRequest) as shape:
            keyed.features([photos[0], np.zeros((3, 10, 10), dtype=np.float32)], MODEL)
        assert shape.value.index == 1 and "takes [3, 224, 224]" in shape.value.detail
        with pytest.raises(NotFound, match="no model 'resnet50'"):
            keyed.labels("resnet50")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        proxy: Flaky = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with proxy.lock:
            proxy.seen.append(f"{self.command} {self.path}")
            failing, proxy.failures = proxy.failures > 0, proxy.failures - 1
        if failing and proxy.status == 0:  # drop the connection without an answer
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if failing:
            problem = b'{"type": "about:blank", "title": "Busy", "status": %d, "detail": "busy, try again"}'
            self._send(proxy.status, {"Content-Type": "application/problem+json", "Retry-After": "0"},
                       problem % proxy.status)  # fmt: skip
            return
        headers = {name: value for name, value in self.headers.items() if name.lower() not in {"host", "connection"}}
        upstream = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body, timeout=60)
        kept = {name: upstream.headers[name] for name in ("Content-Type", "Retry-After") if name in upstream.headers}
        self._send(upstream.status_code, kept, upstream.content)

    def _send(self, status: int, headers: dict[str, str], body: bytes):
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Flaky(ThreadingHTTPServer):
    """A proxy to `upstream` on 127.0.0.1 that fails the next `failures` requests with `status` (0: drops them)."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.seen: list[str] = []
        self.failures, self.status = 0, 503

    def fail(self, times: int, status: int) -> Flaky:
        self.seen, self.failures, self.status = [], times, status
        return self


@pytest.fixture(scope="module")
def flaky(server):
    proxy = Flaky(server.url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.mark.parametrize("status", [503, 429, 0], ids=["503", "429", "dropped"])
def test_busy_answers_and_dropped_connections_are_retried(flaky, client, photos, status):
    flaky.fail(2, status)
    with FeaturesClient(flaky.url, retries=2) as patient:
        result = patient.features(photos[:2], MODEL, layers="embedding")
    post = f"POST /v1/models/{MODEL}/features"
    assert flaky.seen == [post] * 3
    direct = client.features(photos[:2], MODEL, layers="embedding")
    np.testing.assert_allclose(result.layer("embedding"), direct.layer("embedding"), rtol=1e-5, atol=1e-6)


def test_retries_end_and_other_refusals_are_never_retried(flaky, photos):
    with FeaturesClient(flaky.url, retries=1) as impatient:
        flaky.fail(5, 503)
        with pytest.raises(Unavailable) as busy:
            impatient.features(photos[:1], MODEL)
        assert busy.value.status == 503 and busy.value.retry_after == 0 and busy.value.detail == "busy, try again"
        assert len(flaky.seen) == 2
        flaky.fail(5, 429)
        with pytest.raises(RateLimited):
            impatient.model(MODEL)
        assert flaky.seen == [f"GET /v1/models/{MODEL}"] * 2
        flaky.fail(0, 503)
        with pytest.raises(BadRequest):
            impatient.features(photos[:1], MODEL, pooling="median")
        assert len(flaky.seen) == 1
    with pytest.raises(FeaturesConnectionError, match="cannot reach") as unreachable:
        FeaturesClient(f"http://127.0.0.1:{free_port()}", retries=1).health()
    assert isinstance(unreachable.value, FeaturesClientError)


def test_the_docs_example_runs(server, photos, tmp_path, monkeypatch):
    """docs/client.md's Python blocks, in a folder holding its cat.jpg and coffee.jpg, against the test server."""
    (tmp_path / "cat.jpg").write_bytes(photos[0].read_bytes())
    (tmp_path / "coffee.jpg").write_bytes(photos[1].read_bytes())
    monkeypatch.chdir(tmp_path)
    printed = run_python_examples("client.md", server.url)
    assert "(2, 1280)" in printed and "Egyptian cat" in printed
