"""Slow and stalled clients against a real gunicorn on 127.0.0.1 (the buffering worker, service/http_worker.py).

64 connections trickle their headers, trickle their bodies or stop mid-request while another client's /healthz
and feature requests keep answering; the held connections are closed after their configured deadline; a client
that stops reading its response frees its thread after the send timeout. Figures are printed (`pytest -s`)
and recorded in docs/reliability.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import time

import pytest
import requests

from tests.helpers import photo_jpeg
from tests.integration.conftest import Server

FEATURES = "/v1/models/efficientnet_lite0/features"
HELD = 64
HEADER_TIMEOUT = 5
BODY_TIMEOUT = 5


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return photo_jpeg()


@pytest.fixture(scope="module")
def strict_server(models_dir):
    """Short deadlines so the test sees connections closed; the defaults are longer (docs/reliability.md)."""
    server = Server(
        models_dir,
        FEATURES_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        FEATURES_BODY_TIMEOUT=str(BODY_TIMEOUT),
        FEATURES_BODY_MIN_RATE="1000000",
        FEATURES_SEND_TIMEOUT="2",
        FEATURES_MAX_BODY_BYTES="3000000",
    ).wait_ready()
    yield server
    server.stop()


def slow_connection(port: int, style: str) -> socket.socket:
    """A connection whose request will never be complete on its own: headers or body arrive a byte at a time."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = f"POST {FEATURES} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
    if style == "headers":  # request line and part of the headers; the blank line never comes
        sock.sendall(head.encode())
    elif style == "body":  # complete headers, then the body trickles
        sock.sendall(f"{head}Content-Length: 100000\r\n\r\n".encode() + b"\xff\xd8")
    else:  # "idle": headers and half a body, then nothing at all
        sock.sendall(f"{head}Content-Length: 4000\r\n\r\n".encode() + b"\0" * 2000)
    return sock


def trickle(connections: list[tuple[str, socket.socket]], stop: threading.Event) -> None:
    """One byte every 0.2 s on each trickling connection, until stopped or the server closes it."""
    while not stop.wait(0.2):
        for style, sock in connections:
            if style == "idle":
                continue
            with contextlib.suppress(OSError):  # closed by the server: its deadline passed
                sock.send(b"X" if style == "headers" else b"\0")


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:  # a reset also closes it
        pass
    return data


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_64_slow_connections_do_not_starve_other_clients_and_are_closed_in_time(strict_server, jpeg):
    styles = ["headers", "body", "idle"]
    held = [(styles[i % 3], slow_connection(strict_server.port, styles[i % 3])) for i in range(HELD)]
    opened = time.monotonic()
    stop = threading.Event()
    trickler = threading.Thread(target=trickle, args=(held, stop), daemon=True)
    trickler.start()
    health, features = [], []
    try:
        with requests.Session() as session:
            for _ in range(10):  # all within HEADER_TIMEOUT: every held connection is still open meanwhile
                started = time.monotonic()
                assert session.get(strict_server.url + "/healthz", timeout=10).status_code == 200
                health.append(time.monotonic() - started)
                started = time.monotonic()
                response = session.post(strict_server.url + FEATURES + "?layers=logits", data=jpeg,
                                        headers={"Content-Type": "image/jpeg"}, timeout=10)  # fmt: skip
                assert response.status_code == 200, response.text
                features.append(time.monotonic() - started)
        answers = {}
        closed_after = {}
        for index, (_, sock) in enumerate(held):
            answers[index] = read_until_closed(sock)
            closed_after[index] = time.monotonic() - opened
    finally:
        stop.set()
        trickler.join()
        for _, sock in held:
            sock.close()
    print(f"\n[{HELD} slow connections held] /healthz p99 {p99(health) * 1e3:.0f} ms, feature request p99 "
          f"{p99(features) * 1e3:.0f} ms; held connections closed after {min(closed_after.values()):.1f}-"
          f"{max(closed_after.values()):.1f} s (header/body timeout {HEADER_TIMEOUT}/{BODY_TIMEOUT} s)")  # fmt: skip
    assert p99(health) < 1.0 and p99(features) < 1.0
    for index, (style, _) in enumerate(held):
        assert answers[index].startswith(b"HTTP/1.1 408 "), (style, answers[index][:200])
        assert b"application/problem+json" in answers[index]
    # closed by the server's deadline (checked once a second), never held until the client gives up
    assert max(closed_after.values()) < max(HEADER_TIMEOUT, BODY_TIMEOUT) + 15


def test_a_client_that_does_not_read_its_response_frees_the_thread(strict_server, jpeg):
    """More non-reading clients than request threads, each asking for a large response with a tiny receive
    window: after the send timeout their threads serve others again, and /healthz answered all along."""
    threads = 8  # the service's default FEATURES_THREADS
    image = base64.b64encode(jpeg).decode()
    # full low-level maps of 3 images: about 12 MB of JSON, more than loopback's socket buffers hold
    body = json.dumps({"inputs": [{"image": image}] * 3, "levels": "low", "pooling": "none"}).encode()
    stalled = []
    before = send_timeouts(strict_server.url)
    for _ in range(threads + 2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", strict_server.port))
        sock.sendall(f"POST {FEATURES} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        stalled.append(sock)
    try:
        started = time.monotonic()
        assert requests.get(strict_server.url + "/healthz", timeout=30).status_code == 200
        waited = time.monotonic() - started
        # read nothing until the server has given up on every one of them (reading earlier would let a late
        # answer go out whole); the metric counts each connection dropped for its send timeout
        deadline = time.monotonic() + 120
        while send_timeouts(strict_server.url) < before + len(stalled):
            assert time.monotonic() < deadline, "the server never gave up on the clients that do not read"
            time.sleep(0.2)
        for sock in stalled:  # the server gave up on each: reading now ends in a close, not the full answer
            sock.settimeout(30)
            answer = read_until_closed(sock)
            head, _, sent = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            length = int(re.search(rb"(?i)content-length: *([0-9]+)", head).group(1))
            assert len(sent) < length, "the whole response went out: the send timeout was never needed"
    finally:
        for sock in stalled:
            sock.close()
    print(f"\n[{len(stalled)} clients not reading] /healthz answered after {waited:.2f} s")


def send_timeouts(url: str) -> float:
    """features_http_refused_total{reason="send_timeout"} of the server (0 before the first)."""
    metrics = requests.get(url + "/metrics", timeout=30).text
    found = re.search(r'^features_http_refused_total\{reason="send_timeout"\} ([0-9.e+]+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0
