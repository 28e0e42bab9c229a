"""Operating the service: Prometheus metrics across workers, JSON logs with request ids, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.servers import worker_pids
from tests.helpers import photo_jpeg
from tests.integration.conftest import Server
from tests.openapi_check import conforms

FEATURES = "/v1/models/efficientnet_lite0/features"


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted label items: value}}."""
    response = requests.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    conforms(response, "/metrics", "get")
    samples: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(value for key, value in samples.get(name, {}).items() if set(labels.items()) <= set(key))


@pytest.fixture(scope="module")
def two_workers(models_dir, tmp_path_factory):
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    (metrics_dir / "counter_999999.db").write_bytes(b"left over from an earlier run")
    server = Server(models_dir, FEATURES_WORKERS="2", FEATURES_THREADS="4", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    server.wait_ready()
    for _ in range(100):  # /readyz answered by one worker; wait for the other to load too
        if len(worker_pids(server.process.pid)) == 2 and all(
            requests.get(f"{server.url}/readyz", timeout=5).status_code == 200 for _ in range(4)
        ):
            break
        time.sleep(0.2)
    yield server, metrics_dir
    server.stop()
    assert metrics_dir.is_dir(), "a configured PROMETHEUS_MULTIPROC_DIR is the operator's: kept at exit"


def test_metrics_add_up_across_two_workers(two_workers):
    server, metrics_dir = two_workers
    assert not (metrics_dir / "counter_999999.db").exists(), "stale samples must be removed at start"
    cat, coffee = photo_jpeg("chelsea"), photo_jpeg("coffee")
    before = scrape(server.url)
    good, bad = 24, 6

    def send(index: int) -> int:
        if index < bad:
            return requests.post(server.url + FEATURES, data=b"not an image", headers={"Content-Type": "image/jpeg"},
                                 timeout=60).status_code  # fmt: skip
        files = [("image", ("a.jpg", cat)), ("image", ("b.jpg", coffee))]
        return requests.post(server.url + FEATURES, files=files, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(good + bad)))
    assert statuses.count(200) == good and statuses.count(422) == bad
    pids = {name.split("_")[-1] for name in os.listdir(metrics_dir) if name.endswith(".db")}
    assert len(pids) >= 2, f"both workers should have written samples: {sorted(os.listdir(metrics_dir))}"

    for _ in range(4):  # every scrape, whichever worker answers it, reports the whole server
        after = scrape(server.url)
        route = "/v1/models/<model_name>/features"

        def delta(name: str, after=after, **labels) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert delta("features_http_requests_total", route=route, status="200") == good
        assert delta("features_http_requests_total", route=route, status="422") == bad
        assert delta("features_http_request_duration_seconds_count", route=route) == good + bad
        assert delta("features_images_total", model="efficientnet_lite0") == 2 * good
        assert delta("features_inference_batch_images_sum", model="efficientnet_lite0") == 2 * good
        runs = delta("features_inference_batch_images_count", model="efficientnet_lite0")
        assert 1 <= runs <= good
        assert delta("features_inference_seconds_count", model="efficientnet_lite0") == runs
        assert delta("features_errors_total", status="422") == bad
        assert total(after, "features_http_requests_in_flight") == 1  # this scrape


def test_a_killed_workers_counts_survive(two_workers):
    server, _ = two_workers
    before = scrape(server.url)
    counted = total(before, "features_http_requests_total", status="200")
    victim = worker_pids(server.process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = worker_pids(server.process.pid)
        if len(pids) == 2 and victim not in pids and requests.get(f"{server.url}/readyz", timeout=5).ok:
            break
        time.sleep(0.2)
    after = scrape(server.url)
    # the dead worker's counters stay (they are history); only its live gauge is dropped
    assert total(after, "features_http_requests_total", status="200") >= counted
    assert total(after, "features_http_requests_in_flight") == 1


def test_logs_are_json_lines_with_request_ids(two_workers):
    server, _ = two_workers
    response = requests.post(server.url + FEATURES, data=photo_jpeg("chelsea"), timeout=60,
                             headers={"Content-Type": "image/jpeg", "X-Request-ID": "trace-42"})  # fmt: skip
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "trace-42"
    generated = requests.get(f"{server.url}/v1/models/nope", timeout=30)
    assert generated.status_code == 404 and len(generated.headers["X-Request-ID"]) == 32
    time.sleep(0.5)
    lines = [line for line in server.output().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's own included, is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    access = [e for e in entries if e["logger"] == "service.access" and e.get("request_id") == "trace-42"]
    assert len(access) == 1 and access[0]["status"] == 200 and access[0]["duration_ms"] > 0
    problem = [e for e in entries if e.get("request_id") == generated.headers["X-Request-ID"]]
    assert {e["logger"] for e in problem} >= {"service", "service.access"}
    assert any(e["logger"] == "gunicorn.error" and "Booting worker" in e["message"] for e in entries)


def test_sigterm_lets_in_flight_requests_finish(models_dir):
    server = Server(models_dir, FEATURES_MAX_IMAGES="16").wait_ready()
    try:
        metrics_dir = server.metrics_dir()
        assert metrics_dir.is_dir()
        files = [("image", (f"{i}.jpg", photo_jpeg("astronaut"))) for i in range(16)]
        result: dict = {}

        def heavy_request() -> None:  # full maps of every layer as JSON numbers: seconds of work
            response = requests.post(server.url + FEATURES, files=files, data={"pooling": "none"}, timeout=120)
            result["status"], result["body"] = response.status_code, response.content

        client = threading.Thread(target=heavy_request)
        client.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the heavy request is being served
            if total(scrape(server.url), "features_http_requests_in_flight") >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the heavy request never started")
        server.process.send_signal(signal.SIGTERM)
        client.join(timeout=120)
        assert server.process.wait(timeout=60) == 0
        assert result["status"] == 200
        body = json.loads(result["body"])  # complete, not cut off
        assert len(body["results"]) == 16 and body["results"][15]["features"]["low"]["stem"]["shape"] == [32, 112, 112]
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/healthz", timeout=5)
        assert not metrics_dir.exists(), "the master removes the metrics folder it made when it exits"
    finally:
        if server.process.poll() is None:
            server.stop()
