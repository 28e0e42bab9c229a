"""SIGTERM stops gunicorn cleanly: every worker exits 0, requests already accepted complete (issue 12).

Every worker used to abort at exit ("terminate called after throwing an instance of 'std::system_error'",
SIGABRT): the master imported onnxruntime, whose import starts a native thread owned by a C++ static; a forked
worker inherits the static but not the thread, and the static's destructor joined that thread at exit(). The
master now never loads ONNX Runtime, and each worker closes its batchers and sessions in order before the
interpreter finalises. (The micro-batcher's own close, queued jobs run and later ones refused, is
tests/unit/test_batcher.py.)

Nothing here waits a fixed time for an outcome: each step waits on a condition, with a generous deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from contextlib import closing, suppress
from pathlib import Path

import pytest
import requests

from bench.servers import worker_pids
from tests.helpers import photo_jpeg, wait_until
from tests.integration.conftest import Server

MODEL = "efficientnet_lite0"
FEATURES_PATH = f"/v1/models/{MODEL}/features"
IN_FLIGHT_IMAGES = 8
DEADLINE_S = 90  # far above graceful_timeout (30 s): only a hung shutdown reaches it
LOG_FORBIDDEN = ("terminate called", "SIGABRT", "SIGSEGV", "was sent", "exited with code", "Traceback")


# ------------------------------------------------------------------------------------------------ real gunicorn


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with one 'image' field per image, and its Content-Type."""
    prepared = requests.Request(
        "POST", "http://unused/", files=[("image", (f"{i}.jpg", image, "image/jpeg")) for i, image in enumerate(images)]
    ).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def accepted_request(server: Server, image: bytes) -> http.client.HTTPConnection:
    """A kept-alive connection that a worker has already accepted and served once."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=DEADLINE_S)
    connection.request("POST", FEATURES_PATH, body=image, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert not response.will_close, "the worker must keep the connection open for the in-flight request"
    return connection


def start_in_flight(connection: http.client.HTTPConnection, images: list[bytes]) -> bytes:
    """Send a request on an accepted connection but for its last byte (returned): the worker cannot have
    answered it yet, so it is certainly in flight when SIGTERM arrives."""
    body, content_type = multipart(images)
    connection.putrequest("POST", FEATURES_PATH)
    connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    connection.send(body[:-1])
    return body[-1:]


def assert_clean_exit(log: str, master_status: int, workers: list[int]) -> None:
    assert master_status == 0, log
    for forbidden in LOG_FORBIDDEN:
        assert forbidden not in log, f"{forbidden!r} in gunicorn's log:\n{log}"
    # gunicorn 27.0.1's arbiter logs every worker that dies by a signal ("Worker (pid:N) was sent SIG...!") or
    # exits non-zero ("Worker (pid:N) exited with code C."), SIGKILL at the end of graceful_timeout included;
    # a worker that left its run loop logs "Worker exiting (pid: N)". Both together: each exited with status 0.
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in log, f"worker {pid} did not stop in order:\n{log}"
        assert f"Worker (pid:{pid})" not in log, log
    assert log.count("batchers stopped, sessions released") == len(workers), log  # Registry.close, at exit
    assert "Shutting down: Master" in log, log


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_every_worker_cleanly(models_dir: Path, workers: int) -> None:
    cat, coffee = photo_jpeg("chelsea", quality=75), photo_jpeg("coffee", quality=75)
    server = Server(models_dir, FEATURES_WORKERS=str(workers), FEATURES_MAX_IMAGES=str(IN_FLIGHT_IMAGES))
    try:
        server.wait_ready(timeout=DEADLINE_S)
        ready_line = f"model {MODEL} ready on"
        wait_until(lambda: server.output().count(ready_line) == workers, DEADLINE_S, f"{workers} workers loaded")
        pids = worker_pids(server.process.pid)
        assert len(pids) == workers
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "onnxruntime" not in maps, "the gunicorn master loaded ONNX Runtime; its workers then abort at exit"
        for image in (cat, coffee, cat):
            response = requests.post(
                server.url + FEATURES_PATH, data=image, headers={"Content-Type": "image/jpeg"}, timeout=60
            )
            assert response.status_code == 200, response.text
        with closing(accepted_request(server, cat)) as connection:
            rest = start_in_flight(connection, [cat, coffee] * (IN_FLIGHT_IMAGES // 2))
            server.process.send_signal(signal.SIGTERM)
            connection.send(rest)
            response = connection.getresponse()
            body = response.read()
        assert response.status == 200, body
        assert len(json.loads(body)["results"]) == IN_FLIGHT_IMAGES
        status = server.process.wait(timeout=DEADLINE_S)
        assert_clean_exit(server.output(), status, pids)
    finally:
        kill_all(server)


def kill_all(server: Server) -> None:
    """After a failure: SIGKILL the workers as well as the master, which cannot stop them once killed itself."""
    if server.process.poll() is None:
        for pid in worker_pids(server.process.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.process.kill()
        server.process.wait()
