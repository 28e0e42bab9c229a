"""Reliability on 127.0.0.1, bounded in time: schema fuzzing (schemathesis) and a soak of mixed traffic.

Each test prints its figures (run with -s); the README's reliability section records them.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import requests

from bench.servers import worker_pids
from service.openapi import openapi_document
from tests.helpers import photo_jpeg
from tests.integration.conftest import Server

FEATURES = "/v1/models/efficientnet_lite0/features"


def processes(server: Server) -> list[int]:
    return [server.process.pid, *worker_pids(server.process.pid)]


def open_fds(server: Server) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in processes(server))


# A request with too many inputs is refused as too large (413) whatever else is wrong with it: a rejection. Path
# names are mostly real ones, so the fuzzed bodies reach option parsing, decoding and the model instead of a 404.
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[dictionaries.models]
values = ["efficientnet_lite0"]

[dictionaries.layers]
values = ["stem", "stride8", "head", "embedding", "logits"]

[parameters]
"path.model_name" = { dictionary = "models", probability = 0.9 }
"path.layer_name" = { dictionary = "layers", probability = 0.9 }
"""


def test_schemathesis_finds_no_server_error_and_no_nonconforming_response(models_dir, tmp_path):
    """Every operation of /openapi.json, fuzzed: no 5xx, every status, media type and body as documented.

    Fuzzing repeats rounds of --max-examples cases per operation until --max-time is spent (one round is ~135
    cases in ~3 s here, 15 s about a thousand); the JUnit report shows every operation was fuzzed."""
    schemathesis = shutil.which("st", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is part of the test extra"
    # fuzzed image URLs are fetched for real: no network here, so each public address waits out the URL timeout
    server = Server(models_dir, FEATURES_MAX_BODY_BYTES="2000000", FEATURES_MAX_IMAGES="4",
                    FEATURES_URL_TIMEOUT_S="1").wait_ready()  # fmt: skip
    try:
        config = tmp_path / "schemathesis.toml"
        config.write_text(SCHEMATHESIS_CONFIG)
        command = [
            schemathesis, "--config-file", str(config), "run", f"{server.url}/openapi.json",
            "--checks", "all",
            # a raw body of random bytes is schema-valid (any binary string) but not an image: 422 by design
            "--exclude-checks", "positive_data_acceptance",
            # coverage phase left out: in schemathesis 4.32 on Python 3.11 it crashes inside hypothesis's lambda
            # source parser ("AST constructor recursion depth mismatch"), a tool error, not a finding
            "--phases", "examples,fuzzing",
            "--max-examples", "25", "--seed", "20261125", "--max-time", "15",
            "--request-timeout", "60", "--workers", "2",
            "--report", "junit", "--report-dir", str(tmp_path),
        ]  # fmt: skip
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        summary = [line for line in result.stdout.splitlines() if "generated" in line or "passed" in line]
        print(f"\nschemathesis: {time.monotonic() - started:.0f} s; " + " | ".join(s.strip() for s in summary))
        assert result.returncode == 0, result.stdout[-6000:]
        (report,) = tmp_path.glob("junit*.xml")
        tested = {case.get("name") for case in ElementTree.parse(report).iter("testcase")}
        paths = openapi_document()["paths"]
        documented = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
        # schemathesis leaves out the operation serving the document it loaded (validated in test_service_http.py)
        assert tested == documented - {"GET /openapi.json"}, f"not fuzzed: {sorted(documented - tested)}"
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
        logged = server.output()  # JSON lines (orjson: no space after the colon)
        assert not re.search(r'"status": ?5\d\d', logged) and "Traceback" not in logged
    finally:
        server.stop()


def _soak_requests(cat: bytes, rocket: bytes) -> list[tuple[str, dict, int]]:
    """(kind, requests.post keyword arguments, expected status): valid forms and typical mistakes."""
    encoded = base64.b64encode(cat).decode()
    return [
        ("raw", {"data": cat, "headers": {"Content-Type": "image/jpeg"}}, 200),
        ("raw low", {"data": rocket, "headers": {"Content-Type": "image/jpeg"}, "params": {"levels": "low"}}, 200),
        ("multipart two", {"files": [("image", ("a.jpg", cat)), ("image", ("b.jpg", rocket))]}, 200),
        ("json base64", {"json": {"inputs": [{"image": encoded}], "encoding": "base64", "dtype": "float16"}}, 200),
        ("maps", {"data": rocket, "headers": {"Content-Type": "image/jpeg"},
                  "params": {"layers": "stride16", "pooling": "none", "encoding": "base64"}}, 200),
        ("not an image", {"data": b"\xff\xd8 truncated", "headers": {"Content-Type": "image/jpeg"}}, 422),
        ("bad option", {"json": {"inputs": [{"image": encoded}], "pooling": "sum"}}, 400),
        ("unknown layer", {"json": {"inputs": [{"image": encoded}], "layers": "fc9"}}, 404),
        ("wrong type", {"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415),
        ("bad json", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    ]  # fmt: skip


def test_soak_of_mixed_traffic_keeps_memory_and_descriptors_steady(models_dir):
    total_requests, clients, warmup = 2000, 12, 300
    server = Server(models_dir, FEATURES_THREADS="8").wait_ready()
    try:
        cat, rocket = photo_jpeg("chelsea"), photo_jpeg("rocket", size=(320, 214))
        mix = _soak_requests(cat, rocket)
        weights = [4, 4, 2, 2, 1, 1, 1, 1, 1, 1]  # two thirds valid
        plan = random.Random(7).choices(range(len(mix)), weights, k=total_requests)
        outcomes: Counter[tuple[str, str]] = Counter()
        wrong: list[str] = []
        lock = threading.Lock()
        position = iter(range(total_requests))
        marks: dict[str, float] = {}

        def client() -> None:
            session = requests.Session()
            for index in position:
                if index == warmup:
                    marks["rss"], marks["fds"] = server.rss_mib(), open_fds(server)
                kind, kwargs, expected = mix[plan[index]]
                try:
                    response = session.post(server.url + FEATURES, timeout=120, **kwargs)
                    status = response.status_code
                    ok = status == expected and (expected != 200 or len(response.json()["results"]) >= 1)
                except requests.RequestException as exc:
                    status, ok = type(exc).__name__, False
                with lock:
                    outcomes[(kind, str(status))] += 1
                    if not ok:
                        wrong.append(f"{kind}: {status}")

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        elapsed = time.monotonic() - started
        rss_after, fds_after = server.rss_mib(), open_fds(server)
        valid = sum(n for (kind, status), n in outcomes.items() if status == "200")
        print(
            f"\nsoak: {total_requests} requests from {clients} clients in {elapsed:.0f} s "
            f"({total_requests / elapsed:.0f} req/s), {valid} valid answered 200, {len(wrong)} wrong; "
            f"RSS {marks['rss']:.0f} -> {rss_after:.0f} MiB after request {warmup}; "
            f"open fds {marks['fds']} -> {fds_after}"
        )
        assert not wrong, Counter(wrong).most_common(5)
        assert sum(outcomes.values()) == total_requests
        assert rss_after - marks["rss"] < 64, "memory grows under steady traffic"
        assert fds_after <= marks["fds"] + 4, "file descriptors leak"
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()
