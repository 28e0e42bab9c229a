"""Hostile HTTP against a real gunicorn on 127.0.0.1: framing, limits, odd inputs, generated raw requests.

Every answer to something a client can send is a 4xx problem+json (never a 5xx, never gunicorn's HTML page),
each 413 names the limit it hit whatever the framing, and the service keeps serving. Raw sockets, not a
client library, so that malformed framing reaches the server as it was written. Odd inputs inside well-framed
requests (tensor shapes, counts, form limits, maps.png's k) are the app's: tests/unit/test_service_errors.py
and tests/unit/test_pictures.py.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import socket
import string
import time
from urllib.parse import urlencode

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.servers import worker_pids
from service.v2_framing import speaks_v2
from tests.helpers import photo_jpeg
from tests.integration.conftest import Server

MODEL = "efficientnet_lite0"
FEATURES = f"/v1/models/{MODEL}/features"
V2_INFER = f"/v2/models/{MODEL}/infer"
MAX_BODY = 3_000_000  # the session server's FEATURES_MAX_BODY_BYTES (tests/conftest.py)
MAX_IMAGES = 8


JPEG = photo_jpeg()


def exchange(port: int, raw: bytes, method: str = "GET", timeout: float = 30) -> http.client.HTTPResponse | None:
    """Send raw bytes, half-close, and read the first response (None when the server closed without one)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        response.body = response.read()
        return response
    finally:
        sock.close()


class ResponseStream:
    """Several responses read in turn from one connection: each HTTPResponse must share one buffered reader,
    or the first one's read-ahead swallows the start of the next."""

    def __init__(self, sock: socket.socket):
        self.file = sock.makefile("rb")

    def makefile(self, *_args, **_kwargs):
        return self

    def __getattr__(self, name: str):  # read, readline, readinto, … of the one buffered reader
        return getattr(self.file, name)

    def close(self) -> None:
        """HTTPResponse closes its file after each body; the connection lives on for the next response."""

    def next(self, method: str = "GET") -> http.client.HTTPResponse:
        response = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        response.begin()
        return response


def request(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n" for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def assert_problem(response: http.client.HTTPResponse | None, status: int, *fragments: str) -> dict:
    assert response is not None, "the server closed the connection without an answer"
    assert response.status == status, (response.status, response.body[:300])
    assert response.getheader("Content-Type") == "application/problem+json", response.getheader("Content-Type")
    problem = json.loads(response.body)
    assert problem["status"] == status
    for fragment in fragments:
        assert fragment in problem["detail"], problem["detail"]
    return problem


# --------------------------------------------------------------------------------------------------- framing


CHUNKED, JPEG_TYPE = {"Transfer-Encoding": "chunked"}, {"Content-Type": "image/jpeg"}
OVERSIZED = chunked(b"\xff" * (MAX_BODY + 1))
TWO_LENGTHS = b"POST /v1/models/m/features HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
FRAMING_CASES = {  # name: (raw request, status, a fragment of the detail)
    "chunked body over the limit": (
        request("POST", FEATURES, JPEG_TYPE | CHUNKED, OVERSIZED),
        413,
        f"limit of {MAX_BODY} bytes",
    ),
    "Content-Length over the limit": (
        request("POST", FEATURES, JPEG_TYPE | {"Content-Length": str(MAX_BODY + 1)}),
        413,
        f"limit of {MAX_BODY}",
    ),
    "malformed chunk size": (request("POST", FEATURES, CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n"), 400, "chunk size"),
    "chunk longer than its size": (request("POST", FEATURES, CHUNKED, b"2\r\nabcd\r\n0\r\n\r\n"), 400, "chunk"),
    "both lengths": (request("POST", FEATURES, CHUNKED | {"Content-Length": "5"}, b"0\r\n\r\n"), 400, "both"),
    "unknown transfer coding": (
        request("POST", FEATURES, {"Transfer-Encoding": "gzip, chunked"}, b"0\r\n\r\n"),
        400,
        "Transfer-Encoding",
    ),
    "lengths that differ": (TWO_LENGTHS, 400, "Content-Length"),
    "signed length": (request("POST", FEATURES, {"Content-Length": "+5"}, b"abcde"), 400, "Content-Length"),
    "headers too large": (request("GET", "/healthz", {f"X-Pad-{i}": "a" * 1000 for i in range(70)}), 431, "bytes"),
    "request line too long": (request("GET", "/healthz?" + "a" * 5000), 414, ""),
    "method with odd characters": (request("G<T", "/healthz"), 400, "request line"),
    "lower-case method": (request("get", "/healthz"), 400, ""),
    "HTTP/2 on an HTTP/1 port": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "HTTP version"),
    "folded header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400, "header"),
    "space before colon": (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400, "header"),
    "control character in a header value": (request("GET", "/healthz", {"X-A": "a\x01b"}), 400, ""),
    "unmet expectation": (request("POST", FEATURES, {"Expect": "teapot", "Content-Length": "0"}), 417, "Expect"),
    "SCRIPT_NAME header off the path": (request("GET", "/healthz", {"SCRIPT_NAME": "/x"}), 400, "SCRIPT_NAME"),
}


@pytest.mark.parametrize("case", FRAMING_CASES, ids=list(FRAMING_CASES))
def test_framing_and_header_errors_are_problem_json(server, case):
    raw, status, fragment = FRAMING_CASES[case]
    response = exchange(server.port, raw, method="POST" if raw.startswith(b"POST") else "GET")
    assert_problem(response, status, fragment)
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("case", ["chunked body over the limit", "Content-Length over the limit",
                                  "malformed chunk size", "unmet expectation", "headers too large",
                                  "control character in a header value"])  # fmt: skip
def test_framing_errors_on_v2_routes_take_the_protocols_form(server, case):
    """Refused before the app sees the request, yet answered as the Open Inference Protocol answers errors."""
    raw, status, fragment = FRAMING_CASES[case]
    raw = raw.replace(FEATURES.encode(), V2_INFER.encode(), 1).replace(b" /healthz ", f" {V2_INFER} ".encode(), 1)
    response = exchange(server.port, raw, method="POST" if raw.startswith(b"POST") else "GET")
    assert response is not None and response.status == status, response and response.body[:300]
    assert response.getheader("Content-Type") == "application/json"
    error = json.loads(response.body)
    assert list(error) == ["error"] and fragment in error["error"], error


def embedding(response_body: bytes) -> np.ndarray:
    body = json.loads(response_body)
    return np.asarray(body["results"][0]["features"]["high"]["embedding"]["values"], dtype=np.float32)


def test_chunked_upload_is_read_whole_and_equals_a_content_length_upload(server):
    target = FEATURES + "?layers=embedding"
    length = {"Content-Length": str(len(JPEG))}
    plain = exchange(server.port, request("POST", target, JPEG_TYPE | length, JPEG), "POST")
    in_chunks = exchange(server.port, request("POST", target, JPEG_TYPE | CHUNKED, chunked(JPEG, 1000)), "POST")
    assert plain.status == in_chunks.status == 200, in_chunks.body[:300]
    assert np.array_equal(embedding(plain.body), embedding(in_chunks.body))


def test_expect_100_continue_is_answered_before_the_body_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request("POST", FEATURES + "?layers=embedding", {"Content-Type": "image/jpeg",
                             "Content-Length": str(len(JPEG)), "Expect": "100-continue"}))  # fmt: skip
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(JPEG)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        assert response.status == 200 and embedding(response.read()).shape == (1280,)


def test_pipelined_requests_are_answered_in_order(server):
    raw = request("GET", "/healthz") + request("GET", "/v1/models") + request("GET", "/readyz")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw)
        stream = ResponseStream(sock)
        bodies = [json.loads(stream.next().read()) for _ in range(3)]
    assert bodies[0] == {"status": "ok"} and "models" in bodies[1] and bodies[2]["status"] == "ready"


# ------------------------------------------------------------------------------- generated raw HTTP requests

PATHS = ["/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/models", f"/v1/models/{MODEL}", FEATURES,
         f"/v1/models/{MODEL}/labels", f"/v1/models/{MODEL}/layers/stem/maps.png",
         f"/v1/models/{MODEL}/layers/stem/filters.png", "/v1/models/nope/features", "//", "/%00", "/..%2f..%2f",
         "/static/../../etc/passwd", "*", "http://evil.example/healthz", V2_INFER, f"/v2/models/{MODEL}",
         "/v2/health/ready", "/v2", "/v2/models/nope/infer"]  # fmt: skip
OPTION_NAMES = ["layers", "levels", "pooling", "normalize", "encoding", "dtype", "k", "alpha", "zzz"]
HEADER_NAMES = [b"Content-Type", b"Accept", b"X-Request-ID", b"Authorization", b"Host", b"Cookie", b"Range",
                b"Connection", b"X-Forwarded-For", b"X-Forwarded-Proto", b"Expect", b"Content-Encoding",
                b"SCRIPT_NAME", b"X_Forwarded_Proto", b"Upgrade", b"Forwarded", b"Trailer", b"TE"]  # fmt: skip
CONTENT_TYPES = [b"image/jpeg", b"image/png", b"application/json", b"multipart/form-data; boundary=b0",
                 b"multipart/form-data", b"text/plain", b"", b"application/json; charset=utf-16",
                 b"image/jpeg; q=\x00"]  # fmt: skip
BODIES = [
    b"",
    JPEG,
    JPEG[: len(JPEG) // 2],
    b"{}",
    b'{"inputs": []}',
    b'{"inputs": [{"image": "' + base64.b64encode(JPEG) + b'"}], "layers": ["logits"]}',
    b'{"inputs": [{"tensor": {"shape": [3, 224, 224], "data": ""}}]}',
    b'{"inputs": [{"image": 5}], "pooling": {"a": 1}}',
    b'--b0\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' + JPEG + b"\r\n--b0--\r\n",
    b'--b0\r\nContent-Disposition: form-data; name="image"\r\n\r\nxx\r\n--b0',
    b"\x89PNG\r\n\x1a\n" + bytes(40),
    b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["' + base64.b64encode(JPEG) + b'"]}]}',
    b'{"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}'
    + b"\x05\x00\x00\x00abcde",
    b'{"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP16", "data": [[1]]}], "outputs": 3}',
]


@st.composite
def raw_requests(draw) -> tuple[bytes, str, bool]:
    """(bytes, method, complete): request line, headers and framing drawn from the odd and the valid."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
                  | st.text(string.ascii_uppercase + "-_!", min_size=1, max_size=24))  # fmt: skip
    query = draw(st.lists(st.tuples(st.sampled_from(OPTION_NAMES), st.text(max_size=12)), max_size=3))
    target = draw(st.sampled_from(PATHS)) + ("?" + urlencode(query) if query else "")
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES) | st.binary(min_size=1, max_size=12),
                                      st.binary(max_size=40)), max_size=4))  # fmt: skip
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    body = draw(st.sampled_from(BODIES) | st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "none", "short-length", "bad-chunk"]))
    head = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Content-Type: " + content_type]
    head += [name + b": " + value for name, value in headers]
    complete = True
    if framing == "length":
        head.append(f"Content-Length: {len(body)}".encode())
    elif framing == "short-length":  # claims more than it sends: the server must not wait past the half-close
        head.append(f"Content-Length: {len(body) + 10}".encode())
        complete = False
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        body = chunked(body, draw(st.integers(1, 4096)))
    elif framing == "bad-chunk":  # malformed, or merely unfinished
        head.append(b"Transfer-Encoding: chunked")
        body = b"1;" + body[:10] + b"\r\n\r\n"
        complete = False
    else:
        body = b""
    return b"\r\n".join(head) + b"\r\n\r\n" + body, method, complete


@pytest.fixture(scope="module")
def fuzz_server(models_dir):
    server = Server(models_dir, FEATURES_MAX_BODY_BYTES=str(MAX_BODY), FEATURES_MAX_IMAGES=str(MAX_IMAGES),
                    FEATURES_API_KEY="fuzz-key").wait_ready()  # fmt: skip
    yield server
    server.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])  # fmt: skip
@given(case=raw_requests(), with_key=st.booleans())
def test_generated_raw_requests_never_get_a_server_error(fuzz_server, case, with_key):
    raw, method, complete = case
    if with_key:
        raw = raw.replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\nAuthorization: Bearer fuzz-key", 1)
    response = exchange(fuzz_server.port, raw, method=method)
    if response is None:  # only a request still incomplete when the client half-closed goes unanswered
        assert not complete, raw[:300]
        return
    assert response.status < 500, (raw[:300], response.status, response.body[:300])
    path = raw.split(b" ")[1].partition(b"?")[0].decode("latin-1")
    if response.status >= 400 and speaks_v2(path):  # the protocol's own error form
        assert response.getheader("Content-Type") == "application/json", (raw[:300], response.body[:200])
        assert method == "HEAD" or list(json.loads(response.body)) == ["error"], (raw[:300], response.body[:200])
    elif response.status >= 400:
        assert response.getheader("Content-Type") == "application/problem+json", (raw[:300], response.body[:200])


def test_the_fuzzed_server_kept_serving_without_a_restart(fuzz_server):
    """Runs after the generated requests: the same worker answers a real request correctly."""
    before = worker_pids(fuzz_server.process.pid)
    response = requests.post(fuzz_server.url + FEATURES + "?layers=logits", data=JPEG, timeout=60,
                             headers={"Content-Type": "image/jpeg", "Authorization": "Bearer fuzz-key"})  # fmt: skip
    assert response.status_code == 200
    assert worker_pids(fuzz_server.process.pid) == before
    assert "Traceback" not in fuzz_server.output()


# ---------------------------------------------------------------------------------------------------- metrics


def test_metrics_stay_bounded_after_10000_junk_requests(fuzz_server):
    """Unknown methods and paths, without the key: each is counted, none becomes a new label value."""
    auth = {"Authorization": "Bearer fuzz-key"}
    before = len(requests.get(fuzz_server.url + "/metrics", headers=auth, timeout=10).content)
    rng = random.Random(12)
    sent = answered = 0
    started = time.monotonic()
    while sent < 10_000:
        batch = b"".join(
            request("".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12))), f"/junk/{rng.random()}")
            for _ in range(200)
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=60) as sock:
            sock.sendall(batch)
            stream = ResponseStream(sock)
            for _ in range(200):
                response = stream.next()
                response.read()
                answered += response.status in (401, 405)
        sent += 200
    after = len(requests.get(fuzz_server.url + "/metrics", headers=auth, timeout=10).content)
    print(f"\n[metrics flood] {sent} junk requests in {time.monotonic() - started:.1f} s: /metrics {before} -> "
          f"{after} bytes")  # fmt: skip
    assert answered == sent
    assert after < before + 4096, "junk requests created new label values"
