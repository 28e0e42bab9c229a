"""Image URLs as inputs, under a real gunicorn with the real EfficientNet-Lite0, fetched from a real HTTP server on
127.0.0.1 (allow-listed with FEATURES_URL_ALLOW=127.0.0.1/32): a fetched photo gives exactly the features of the
same photo uploaded, in every request form; every refusal (an address, a scheme, redirects, size, a slow drip,
an upstream error, a non-image) is a clear problem+json, and the service still serves after all of them.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import numpy as np
import pytest
import requests

from tests.deploy_files import require_tool
from tests.helpers import free_port, photo_jpeg
from tests.integration.conftest import Server
from tests.openapi_check import conforms

FEATURES = "/v1/models/{model_name}/features"
MODEL = "efficientnet_lite0"
MAX_BODY = 3_000_000  # the module server's FEATURES_MAX_BODY_BYTES, as the shared server's
LAYERS = ["stride8", "embedding"]  # a map and a vector, so that the answers stay small
PHOTOS = {"cat.jpg": photo_jpeg("chelsea"), "coffee.jpg": photo_jpeg("coffee"),
          "rocket.jpg": photo_jpeg("rocket", size=(200, 300))}  # fmt: skip
DRIP_S = 0.1  # one byte this often: a server that never stops sending, only slowly


class Origin(BaseHTTPRequestHandler):
    """The remote server: photos, errors, redirects, oversized and slow answers, by path."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        name = path.rpartition("/")[2]
        try:
            if path.startswith("/photos/") and name in PHOTOS:
                self.answer(200, PHOTOS[name], "image/jpeg")
            elif path.startswith("/as-text/") and name in PHOTOS:
                self.answer(200, PHOTOS[name], "text/plain")  # the Content-Type is not what decides
            elif path == "/page.html":
                self.answer(200, b"<html><body>not an image</body></html>", "text/html")
            elif path.startswith("/hop/"):  # /hop/N: N more redirects, then the cat
                hops = int(name)
                self.redirect(f"/hop/{hops - 1}" if hops else "/photos/cat.jpg")
            elif path.startswith("/to/"):
                self.redirect(unquote(name))
            elif path == "/huge-length":
                self.answer(200, b"\xff\xd8" + b"\0" * 1000, "image/jpeg", length=MAX_BODY + 1)
            elif path == "/huge-chunked":
                self.huge_chunked()
            elif path == "/drip-body":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.drip()
            elif path == "/drip-head":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self.drip()
            else:
                self.answer(404, b"no such photo", "text/plain")
        except OSError:
            pass  # the service hung up, as it should on a refused answer

    def answer(self, status: int, body: bytes, content_type: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def huge_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"\0" * 65536
        for _ in range(MAX_BODY // len(chunk) + 2):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def drip(self) -> None:
        for _ in range(int(30 / DRIP_S)):  # far past the service's 1 s; it ends when the service hangs up
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(DRIP_S)


class OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a connection the service dropped mid-answer is the expected outcome here


@contextlib.contextmanager
def serving(server: OriginServer):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def origin():
    with serving(OriginServer(("127.0.0.1", 0), Origin)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate (its file, its key's) for the name localhost only, no IP address in it."""
    folder = tmp_path_factory.mktemp("tls")
    openssl = require_tool("openssl", "apt-get install openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", folder / "key.pem", "-out", folder / "cert.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def tls_origin(certificate):
    """The origin over HTTPS on 127.0.0.1; yields its port and the server names (SNI) clients sent."""
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.sni_callback = lambda _socket, name, _context: names.append(name)
    server = OriginServer(("127.0.0.1", 0), Origin)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server):
        yield server.server_address[1], names


@pytest.fixture(scope="module")
def url_server(models_dir, certificate):
    """The service allowed to fetch from this machine, in 1 s, trusting the test certificate (OpenSSL's
    SSL_CERT_FILE, the system's CA file otherwise)."""
    instance = Server(models_dir, FEATURES_URL_ALLOW="127.0.0.1/32,::1/128", FEATURES_URL_TIMEOUT_S="1",
                      FEATURES_MAX_BODY_BYTES=str(MAX_BODY), FEATURES_MAX_IMAGES="8",
                      SSL_CERT_FILE=str(certificate[0])).wait_ready()  # fmt: skip
    yield instance
    instance.stop()


def post(server, json=None, files=None, data=None, params=None, body=None, headers=None):
    response = requests.post(f"{server.url}/v1/models/{MODEL}/features", json=json, files=files,
                             data=body if body is not None else data, params=params, headers=headers or {},
                             timeout=60)  # fmt: skip
    conforms(response, FEATURES, "post")
    return response


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vectors(result: dict) -> dict[str, np.ndarray]:
    return {layer: np.array(encoded["values"]) for level in result["features"].values()
            for layer, encoded in level.items()}  # fmt: skip


def assert_same_features(results: list[dict], expected: list[bytes], server) -> None:
    """Each result equals, exactly, what the same photo uploaded in multipart gives."""
    files = [("image", (f"{i}.jpg", data)) for i, data in enumerate(expected)]
    uploaded = post(server, files=files, data={"layers": ",".join(LAYERS)})
    assert uploaded.status_code == 200, uploaded.text
    assert len(results) == len(expected)
    for got, reference in zip(results, uploaded.json()["results"], strict=True):
        got, reference = vectors(got), vectors(reference)
        assert set(got) == set(LAYERS) and all(np.array_equal(got[k], reference[k]) for k in LAYERS)


def test_fetched_urls_and_data_uris_give_exactly_the_uploads_features(url_server, origin):
    cat = PHOTOS["cat.jpg"]
    response = post(url_server, json={"inputs": [
        {"url": f"{origin}/photos/cat.jpg"},
        {"image": b64(cat)},
        {"url": f"{origin}/photos/coffee.jpg?size=full", "name": "coffee"},
        {"url": f"data:image/jpeg;base64,{b64(cat)}"},
        {"url": f"{origin}/as-text/rocket.jpg"},
        {"url": f"{origin}/hop/4"},  # five redirects: the most followed
    ], "layers": LAYERS})  # fmt: skip
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["name"] for r in results] == ["cat.jpg", None, "coffee", None, "rocket.jpg", "4"]
    assert_same_features(results, [cat, cat, PHOTOS["coffee.jpg"], cat, PHOTOS["rocket.jpg"], cat], url_server)


def test_url_fields_in_multipart_and_url_in_the_query(url_server, origin):
    """Inputs in order: the form's files, its url fields, then the query's urls."""
    multipart = post(url_server, files=[("image", ("upload.jpg", PHOTOS["cat.jpg"]))],
                     data={"url": [f"{origin}/photos/coffee.jpg"], "layers": ",".join(LAYERS)},
                     params={"url": f"{origin}/photos/rocket.jpg"})  # fmt: skip
    assert multipart.status_code == 200, multipart.text
    results = multipart.json()["results"]
    assert [r["name"] for r in results] == ["upload.jpg", "coffee.jpg", "rocket.jpg"]
    assert_same_features(results, [PHOTOS["cat.jpg"], PHOTOS["coffee.jpg"], PHOTOS["rocket.jpg"]], url_server)

    query_only = requests.post(f"{url_server.url}/v1/models/{MODEL}/features", timeout=60,
                               params=[("url", f"{origin}/photos/coffee.jpg"), ("url", f"{origin}/photos/cat.jpg"),
                                       ("layers", ",".join(LAYERS))])  # fmt: skip
    assert "Content-Type" not in query_only.request.headers and query_only.request.body is None
    assert query_only.status_code == 200, query_only.text
    assert [r["name"] for r in query_only.json()["results"]] == ["coffee.jpg", "cat.jpg"]
    assert_same_features(query_only.json()["results"], [PHOTOS["coffee.jpg"], PHOTOS["cat.jpg"]], url_server)

    raw_and_query = post(url_server, body=PHOTOS["rocket.jpg"], headers={"Content-Type": "image/jpeg"},
                         params={"url": f"{origin}/photos/cat.jpg", "layers": ",".join(LAYERS)})  # fmt: skip
    assert raw_and_query.status_code == 200, raw_and_query.text
    assert_same_features(raw_and_query.json()["results"], [PHOTOS["rocket.jpg"], PHOTOS["cat.jpg"]], url_server)


REFUSALS = [  # (path on the origin or a whole URL, status, what the detail says after "inputs[1] (…): ")
    ("/to/" + quote("http://127.0.0.2/photos/cat.jpg", safe=""), 400,
     "redirected to http://127.0.0.2/photos/cat.jpg: 127.0.0.2 is a loopback address; allow it with FEATURES_URL_"),
    ("/to/" + quote("http://169.254.169.254/latest/meta-data/", safe=""), 400,
     "redirected to http://169.254.169.254/latest/meta-data/: 169.254.169.254 is a link-local address"),
    ("/to/" + quote("http://[::ffff:10.0.0.1]/", safe=""), 400, "a private address (10.0.0.1 inside an IPv6 address)"),
    ("/to/" + quote("file:///etc/passwd", safe=""), 400,
     "redirected to file:///etc/passwd: has the scheme 'file'; only http and https URLs are fetched"),
    ("/hop/5", 422, "redirected more than 5 times"),
    ("/huge-length", 413, f"its Content-Length {MAX_BODY + 1} is over the body limit of {MAX_BODY} bytes"),
    ("/huge-chunked", 413, f"it sent more than the body limit of {MAX_BODY} bytes"),
    ("/drip-body", 422, "not fetched within 1 s (FEATURES_URL_TIMEOUT_S"),
    ("/drip-head", 422, "not fetched within 1 s (FEATURES_URL_TIMEOUT_S"),
    ("/photos/dog.jpg", 422, "the server answered HTTP 404 Not Found"),
    ("gopher://127.0.0.1:70/", 400, "has the scheme 'gopher'; only http and https URLs are fetched"),
    ("http://user:secret@127.0.0.1/", 400, "holds credentials (user@host), which are never sent"),
    ("http://127.0.0.1:{closed}/photos/cat.jpg", 422, "cannot connect to 127.0.0.1:{closed}"),
    ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", 400, "is a data URI of type 'image/gif'"),
    ("data:image/png,rawbytes", 400, "is a data URI without ';base64'"),
    ("data:image/png;base64,@@@", 400, "is a data URI whose data is not valid base64"),
]  # fmt: skip


@pytest.mark.parametrize(("where", "status", "detail"), REFUSALS, ids=[r[0][:40] for r in REFUSALS])
def test_refusals_are_clear_problems_naming_the_input(url_server, origin, where, status, detail):
    closed = free_port()
    url = (where if ":" in where else origin + where).format(closed=closed)
    response = post(url_server, json={"inputs": [{"image": b64(PHOTOS["cat.jpg"])}, {"url": url}], "layers": LAYERS})
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["index"] == 1
    assert problem["detail"].startswith("inputs[1] (") and detail.format(closed=closed) in problem["detail"]
    assert "secret" not in response.text and "rawbytes" not in problem["detail"]
    if url.startswith("http"):
        assert problem["url"] == url.replace("user:secret@", "") and problem["url"] in problem["detail"]
    if "404" in detail:
        assert problem["upstream_status"] == 404


def test_https_connects_to_the_checked_address_but_verifies_the_name(url_server, tls_origin):
    """The service connects to the address it checked, yet sends the URL's name as SNI and checks the certificate
    against it: a certificate for localhost serves https://localhost, not https://127.0.0.1."""
    port, names = tls_origin
    by_name = post(url_server, json={"inputs": [{"url": f"https://localhost:{port}/photos/cat.jpg"}], "layers": LAYERS})
    assert by_name.status_code == 200, by_name.text
    assert_same_features(by_name.json()["results"], [PHOTOS["cat.jpg"]], url_server)
    assert "localhost" in names
    by_address = post(url_server, params={"url": f"https://127.0.0.1:{port}/photos/cat.jpg"})
    assert by_address.status_code == 422, by_address.text
    assert "the TLS certificate of 127.0.0.1 is not valid" in by_address.json()["detail"]


def test_an_answer_that_is_no_image_is_refused_as_an_upload_would_be(url_server, origin):
    """Whatever its Content-Type says, what a URL answers is decoded as an upload: the decoder refuses a page."""
    response = post(url_server, json={"inputs": [{"image": b64(PHOTOS["cat.jpg"])}, {"url": f"{origin}/page.html"}]})
    assert response.status_code == 422 and response.json()["index"] == 1, response.text
    assert response.json()["detail"].startswith("image 1 (page.html): not a recognised image format")


def test_urls_share_one_deadline_and_the_lowest_failing_index_is_named(url_server, origin):
    response = post(url_server, json={"inputs": [{"url": f"{origin}/photos/cat.jpg"}] +
                                      [{"url": f"{origin}/drip-body"}] * 5})  # fmt: skip
    assert response.status_code == 422 and response.json()["index"] == 1, response.text


def test_loopback_is_refused_without_an_allow_list(server, origin):
    """The shared server has no FEATURES_URL_ALLOW: the origin on 127.0.0.1 is out of reach, by any name."""
    port = origin.rpartition(":")[2]
    for url, detail in [
        (f"{origin}/photos/cat.jpg", "127.0.0.1 is a loopback address; allow it with FEATURES_URL_ALLOW"),
        (f"http://localhost:{port}/photos/cat.jpg", "localhost resolves to "),
        (f"http://[::ffff:127.0.0.1]:{port}/photos/cat.jpg", "a loopback address (127.0.0.1 inside an IPv6 address)"),
        (f"http://2130706433:{port}/photos/cat.jpg", "2130706433 resolves to 127.0.0.1, a loopback address"),
    ]:
        response = post(server, params={"url": url})
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith(f"inputs[0] ({url}): ") and detail in response.json()["detail"]


def test_the_service_still_serves_after_every_refusal(url_server, origin):
    response = post(url_server, params={"url": f"{origin}/photos/cat.jpg", "layers": "embedding"})
    assert response.status_code == 200, response.text
    assert requests.get(f"{url_server.url}/readyz", timeout=10).status_code == 200
    log = url_server.output()
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log
