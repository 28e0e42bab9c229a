"""Fault tests with real processes: a replica SIGKILLed behind the repository's nginx config, a gunicorn worker
SIGKILLed under load, nginx's own errors as problem+json. Figures are printed (`pytest -s`) for the README."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import requests

from bench.servers import worker_pids
from tests.deploy_files import Nginx
from tests.helpers import free_port, photo_jpeg, wait_until
from tests.integration.conftest import Server

FEATURES = "/v1/models/efficientnet_lite0/features"
CLIENT_THREADS = 4


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return photo_jpeg()


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None = None  # None: no HTTP response at all
    error: str | None = None
    problem: bool = False  # the body was application/problem+json
    retry_after: str | None = None
    embedding: np.ndarray | None = None


def send(session: requests.Session, url: str, body: bytes) -> Outcome:
    """One raw-JPEG feature request, as a client would send it."""
    outcome = Outcome(time.monotonic(), 0.0)
    try:
        response = session.post(url + FEATURES, data=body, headers={"Content-Type": "image/jpeg"}, timeout=60)
        outcome.status = response.status_code
        outcome.problem = response.headers.get("Content-Type", "").startswith("application/problem+json")
        outcome.retry_after = response.headers.get("Retry-After")
        if response.status_code == 200:
            values = response.json()["results"][0]["features"]["high"]["embedding"]["values"]
            outcome.embedding = np.asarray(values, dtype=np.float32)
    except requests.RequestException as exc:
        outcome.error = type(exc).__name__
    outcome.ended = time.monotonic()
    return outcome


def load(url: str, body: bytes, total: int, fault_after: int, fault) -> tuple[list[Outcome], float]:
    """`total` requests from CLIENT_THREADS threads (keep-alive sessions); `fault()` runs once `fault_after`
    of them have finished, while the others are in flight. Returns the outcomes and when the fault struck."""
    counter = itertools.count()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    reached = threading.Event()

    def client():
        with requests.Session() as session:
            while next(counter) < total:
                outcome = send(session, url, body)
                with lock:
                    outcomes.append(outcome)
                    if len(outcomes) >= fault_after:
                        reached.set()

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    reached.wait(timeout=120)
    struck = time.monotonic()
    fault()
    for thread in threads:
        thread.join(timeout=180)
    assert len(outcomes) == total, "the clients did not finish"
    return outcomes, struck


def sigkill_instance(server: Server) -> None:
    """SIGKILL a gunicorn master and all its workers: the instance vanishes without any clean-up, so the test
    removes the temporary metrics folder the master would have removed on exit."""
    leftover = server.metrics_dir()
    victims = [server.process.pid, *worker_pids(server.process.pid)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    shutil.rmtree(leftover)


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = str(outcome.status) if outcome.status is not None else f"connection error ({outcome.error})"
        counts[key] = counts.get(key, 0) + 1
    return counts


def assert_same_embeddings(outcomes: list[Outcome]) -> None:
    """Every answer, from whichever replica or worker, is the same embedding of the same photo."""
    answers = [o.embedding for o in outcomes if o.embedding is not None]
    assert answers and answers[0].shape == (1280,)
    for answer in answers[1:]:
        np.testing.assert_allclose(answer, answers[0], rtol=1e-5, atol=1e-5)


def settle(url: str, body: bytes, timeout: float = 120) -> None:
    """Wait until 20 feature requests in a row succeed, each on a new connection, so each lands on any worker:
    /readyz answers from one worker only, and another may still be loading its model (503)."""
    streak = [0]

    def settled() -> bool:
        with requests.Session() as session:
            streak[0] = streak[0] + 1 if send(session, url, body).status == 200 else 0
        return streak[0] >= 20

    wait_until(settled, timeout, "20 successful requests in a row")


def two_settled_workers(server: Server, body: bytes) -> tuple[int, set[int]]:
    """Wait until `server` runs two workers that both answer; (master pid, worker pids)."""
    server.wait_ready()
    master = server.process.pid
    wait_until(lambda: len(worker_pids(master)) == 2, 30, "two workers running")
    settle(server.url, body)
    return master, set(worker_pids(master))


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def replicas(models_dir):
    """Two real gunicorn instances (started together, one ORT thread each on this small machine)."""
    pair = [Server(models_dir, FEATURES_ORT_THREADS="1") for _ in range(2)]
    try:
        for server in pair:
            server.wait_ready()
        yield pair
    finally:
        for server in pair:
            server.stop()


def test_nginx_retries_on_the_other_replica_when_one_is_sigkilled_under_load(replicas, jpeg, tmp_path):
    survivor, victim = replicas
    upstreams = [f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"]
    nginx = Nginx(tmp_path, upstreams, free_port()).wait_listening()
    try:
        assert ready(nginx.url)
        outcomes, struck = load(nginx.url, jpeg, total=300, fault_after=100, fault=lambda: sigkill_instance(victim))
    finally:
        nginx.stop()
    log = nginx.access_log()  # complete once nginx has exited

    features = [entry for entry in log if entry["uri"].startswith(FEATURES)]
    retried = [entry for entry in features if "," in entry["upstream"]]
    served_by = {upstream: sum(e["upstream"].endswith(upstream) for e in features) for upstream in upstreams}
    in_flight = sum(o.started < struck < o.ended for o in outcomes)
    # A response the killed replica had begun to send (gunicorn writes the headers, then the body) cannot be
    # retried: nginx has passed the headers on. The client sees it cut short; nginx logs it as below.
    truncated = [o for o in outcomes if o.error == "ChunkedEncodingError"]
    cut_mid_response = nginx.output().count("upstream prematurely closed connection while reading upstream,")
    print(
        f"\n[nginx failover] requests sent: {len(outcomes)}, client-visible failures: "
        f"{sum(o.status != 200 for o in outcomes)} (responses cut mid-body: {len(truncated)}), in flight at the "
        f"SIGKILL: {in_flight}, retried by nginx on the other replica: {len(retried)}, answered by "
        f"killed/surviving replica: {served_by[upstreams[0]]}/{served_by[upstreams[1]]}, outcomes: {summary(outcomes)}"
    )
    failures = [o for o in outcomes if o.status != 200]
    assert all(o.error == "ChunkedEncodingError" for o in failures), "nginx could have retried these"
    assert len(truncated) == cut_mid_response <= in_flight
    assert len(features) == 300
    assert served_by[upstreams[0]] > 0, "the killed replica never served: the fault hit nothing"
    assert retried, "no request was retried: the failover path was not exercised"
    assert all(entry["upstream"].endswith(upstreams[1]) for entry in retried)
    assert_same_embeddings(outcomes)


def test_nginx_answers_its_own_errors_as_problem_json(tmp_path):
    """No replica reachable -> 502; body over the limit -> 413 before upload; both problem+json with the id."""
    closed = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    nginx = Nginx(tmp_path, closed, free_port(), max_body_bytes=3_000_000).wait_listening()
    try:
        response = requests.post(nginx.url + FEATURES, data=b"\xff\xd8", headers={"X-Request-ID": "fault-test-1"})
        assert response.status_code == 502
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["Retry-After"] == "2"
        assert response.headers["X-Request-ID"] == "fault-test-1"
        assert response.json() == {"type": "about:blank", "title": "Bad Gateway", "status": 502,
                                   "detail": "no replica of the feature service answered; retry shortly",
                                   "request_id": "fault-test-1"}  # fmt: skip

        connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        try:  # headers only: nginx must refuse from Content-Length alone, without reading 4 MB
            connection.putrequest("POST", FEATURES)
            connection.putheader("Content-Type", "image/jpeg")
            connection.putheader("Content-Length", "4000000")
            connection.endheaders()
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        assert answer.status == 413
        assert answer.getheader("Content-Type") == "application/problem+json"
        problem = json.loads(body)
        assert problem["status"] == 413
        assert problem["detail"] == "request body is larger than the limit of 3000000 bytes"
        assert problem["request_id"] == answer.getheader("X-Request-ID") != ""
    finally:
        nginx.stop()


@pytest.mark.parametrize("how", ["FEATURES_WORKERS", "--workers flag"])
def test_sigkilled_worker_is_replaced_and_the_service_keeps_answering(models_dir, jpeg, how):
    """Two workers, no nginx: clients talk to gunicorn directly, so what they see is reported as it is. However
    the count is set, the replacement loads before it accepts: only requests the dead worker held can fail."""
    if how == "FEATURES_WORKERS":
        server = Server(models_dir, FEATURES_WORKERS="2", FEATURES_ORT_THREADS="1")
    else:
        server = Server(models_dir, "--workers", "2", FEATURES_ORT_THREADS="1")
    try:
        master, before = two_settled_workers(server, jpeg)
        victim = min(before)
        forked: list[float] = []

        def kill_and_watch():
            os.kill(victim, signal.SIGKILL)
            watcher = threading.Thread(target=lambda: forked.append(wait_until(
                lambda: len(set(worker_pids(master)) - before) == 1, 60, "a new worker forked")))  # fmt: skip
            watcher.start()
            watcher.join()

        outcomes, struck = load(server.url, jpeg, total=240, fault_after=60, fault=kill_and_watch)
        assert forked, "gunicorn did not replace the killed worker"
        settle(server.url, jpeg)
        assert len(worker_pids(master)) == 2
    finally:
        server.stop()

    failures = [o for o in outcomes if o.status != 200]
    after = [o for o in outcomes if o.started > struck]
    in_flight = sum(o.started < struck < o.ended for o in outcomes)
    disruption = max((o.ended for o in failures), default=struck) - struck
    print(
        f"\n[worker SIGKILL, 2 workers ({how}), no nginx] requests sent: {len(outcomes)} ({len(after)} after the "
        f"kill, {in_flight} in flight at it), failures: {len(failures)} {summary(failures)}, new worker forked "
        f"{forked[0]:.2f}s after the kill, last failure {disruption:.2f}s after it"
    )
    assert all(failure.status is None for failure in failures), "only requests cut on the dead worker may fail"
    assert len(failures) <= CLIENT_THREADS, "more cut requests than were in flight"
    assert sum(o.status == 200 for o in after) > 0, "nothing was answered after the kill"
    assert_same_embeddings(outcomes)


def test_single_worker_recovery_time(models_dir):
    """One worker: the service is down until gunicorn forks a new worker and it has loaded the model."""
    server = Server(models_dir, FEATURES_WORKERS="1", FEATURES_ORT_THREADS="1").wait_ready()
    try:
        master = server.process.pid
        (victim,) = worker_pids(master)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        forked = wait_until(lambda: worker_pids(master) not in ([], [victim]), 60, "a new worker forked")
        recovery = forked + wait_until(lambda: ready(server.url), 60, "/readyz 200 again")
        total = time.monotonic() - killed
        assert server.process.poll() is None, "the master must survive its worker"
    finally:
        server.stop()
    print(f"\n[worker SIGKILL, 1 worker] new worker forked after {forked:.2f}s, /readyz 200 again after "
          f"{recovery:.2f}s (measured {total:.2f}s)")  # fmt: skip
