"""Models reloaded in place under a real gunicorn (engine/reload.py): SIGHUP to the master or the admin call.

The swap under load serves a copy of the session's EfficientNet-Lite0 export, whose new version is the same
graph saved with another doc string (another sha256): loading it takes long enough for requests to be in flight
on the old one throughout. The other tests use the tiny CNN of the unit tier, laid out as an export, whose new
versions have other weights (its logits bias shifted). A swap under load must fail no request and every answer
names the old or the new export; a bad export changes nothing but is reported. Nothing here waits a fixed time:
each step waits on a condition (tests/helpers.wait_until).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import pytest
import requests
from onnx import numpy_helper

from bench.servers import worker_pids
from engine.manifest import load_manifest, sha256_of
from tests.helpers import photo_jpeg, wait_until
from tests.integration.conftest import Server
from tests.openapi_check import conforms
from tests.unit import tiny_model

MODEL = tiny_model.NAME
LITE0 = "efficientnet_lite0"
ADMIN_KEY, API_KEY = "admin-secret", "data-key"
RELOAD, MODEL_PATH = "/v1/admin/reload", "/v1/models/{model_name}"  # as the OpenAPI document names them
DEADLINE_S = 60  # far above what any step takes: only a hang reaches it
CLIENTS, MAX_REQUESTS = 3, 3000  # per client: bounded by count as well as by the deadline
AFTER_RELOAD = 30  # answers checked once every worker has reloaded


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return photo_jpeg("chelsea", size=(96, 72))


def export(models: Path, name: str = MODEL, step: float = 0.0, change=None) -> str:
    """models/name as an export of the tiny CNN whose logits bias is shifted by `step` (other weights, another
    sha256), its graph passed through `change` if given; the manifest names its sha256, which is returned."""
    folder = tiny_model.write(models, name)
    graph = onnx.load(folder / "model.onnx")
    bias = next(tensor for tensor in graph.graph.initializer if tensor.name == "logits.b")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + step, "logits.b"))
    if change is not None:
        change(graph)
    onnx.save(graph, folder / "model.onnx")
    return write_manifest(folder, sha256_of(folder / "model.onnx"))


def write_manifest(folder: Path, sha256: str, **onnx_fields) -> str:
    manifest = load_manifest(folder / "model.json")
    manifest = replace(manifest, onnx=replace(manifest.onnx, sha256=sha256, **onnx_fields))
    (folder / "model.json").write_text(manifest.to_json())
    return sha256


def lite0_copy(models: Path, lite0_dir: Path, version: str | None = None) -> str:
    """models/efficientnet_lite0 as a copy of the session's export, or (`version`) its graph saved with that doc
    string; the manifest names its sha256, which is returned."""
    folder = models / LITE0
    if version is None:
        shutil.copytree(lite0_dir, folder)
        return load_manifest(folder / "model.json").onnx.sha256
    graph = onnx.load(lite0_dir / "model.onnx")
    graph.doc_string = version
    onnx.save(graph, folder / "model.onnx")
    return write_manifest(folder, sha256_of(folder / "model.onnx"))


def features(server: Server, jpeg: bytes, session=requests, model: str = MODEL) -> requests.Response:
    headers = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {API_KEY}"}
    return session.post(f"{server.url}/v1/models/{model}/features", data=jpeg, headers=headers, timeout=DEADLINE_S)


def admin_reload(server: Server, key: str | None = ADMIN_KEY) -> requests.Response:
    """The admin call, its answer checked against the OpenAPI document."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = requests.post(server.url + RELOAD, headers=headers, timeout=DEADLINE_S)
    conforms(response, RELOAD, "post")
    return response


def describe(server: Server, model: str = MODEL) -> requests.Response:
    """The model's catalogue entry, checked against the OpenAPI document."""
    response = requests.get(f"{server.url}/v1/models/{model}", headers={"Authorization": f"Bearer {API_KEY}"},
                            timeout=DEADLINE_S)  # fmt: skip
    conforms(response, MODEL_PATH)
    return response


def start(models: Path, workers: int, model: str = MODEL, **env: str) -> Server:
    """The service on `models`, every worker loaded (its `ready` line for `model` logged)."""
    server = Server(models, FEATURES_WORKERS=str(workers), FEATURES_ORT_THREADS="1", **env)
    server.wait_ready(timeout=DEADLINE_S)
    wait_until(lambda: server.output().count(f"model {model} ready on") == workers, DEADLINE_S, "workers loaded")
    return server


def logged(server: Server, text: str) -> int:
    return server.output().count(text)


@dataclass
class Answer:
    started: float
    status: int | None  # None: no HTTP answer at all
    sha256: str | None = None
    error: str | None = None


class Clients:
    """A few threads, each with a keep-alive session, sending the same image until stopped (or MAX_REQUESTS)."""

    def __init__(self, server: Server, jpeg: bytes, model: str):
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + 3 * DEADLINE_S
        self._threads = [threading.Thread(target=self._send, args=(server, jpeg, model)) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _send(self, server: Server, jpeg: bytes, model: str) -> None:
        with requests.Session() as session:
            for _ in range(MAX_REQUESTS):
                if self._stop.is_set() or time.monotonic() > self._deadline:
                    return
                answer = Answer(time.monotonic(), None)
                try:
                    response = features(server, jpeg, session, model)
                    answer.status = response.status_code
                    answer.sha256 = response.json().get("sha256")
                    answer.error = None if response.ok else response.text
                except (requests.RequestException, ValueError) as exc:
                    answer.error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.answers.append(answer)

    def count(self, predicate) -> int:
        with self._lock:
            return sum(1 for answer in self.answers if predicate(answer))

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.answers


def test_sighup_swaps_the_model_in_every_worker_under_load_and_fails_no_request(tmp_path, jpeg, lite0_dir):
    models = tmp_path / "models"
    old = lite0_copy(models, lite0_dir)
    server = start(models, workers=2, model=LITE0)
    try:
        master = server.process.pid
        workers = set(worker_pids(master))
        clients = Clients(server, jpeg, LITE0)
        try:
            wait_until(lambda: clients.count(lambda a: a.sha256 == old) >= 20, DEADLINE_S, "answers before the swap")
            new = lite0_copy(models, lite0_dir, "version 2")
            os.kill(master, signal.SIGHUP)
            wait_until(lambda: logged(server, f"model {LITE0} replaced") == 2, DEADLINE_S, "both workers reloaded")
            reloaded = time.monotonic()
            wait_until(lambda: clients.count(lambda a: a.started > reloaded) >= AFTER_RELOAD, DEADLINE_S,
                       "answers after the reload")  # fmt: skip
        finally:
            answers = clients.stop()
        failed = [answer for answer in answers if answer.status != 200]
        assert not failed, failed[:5]
        assert {answer.sha256 for answer in answers} == {old, new}
        assert all(answer.sha256 == new for answer in answers if answer.started > reloaded)
        assert set(worker_pids(master)) == workers, "the workers were replaced instead of reloading in place"
        wait_until(lambda: logged(server, "retired: batcher stopped, sessions released") == 2, DEADLINE_S,
                   "the old model closed in both workers")  # fmt: skip
        assert "Traceback" not in server.output()

        refused = admin_reload(server)  # no FEATURES_ADMIN_KEY: the admin call is off, and says how to turn it on
        assert refused.status_code == 403 and refused.headers["Content-Type"] == "application/problem+json"
        assert "FEATURES_ADMIN_KEY" in refused.json()["detail"]
    finally:
        server.stop()


def test_admin_reload_adds_replaces_and_removes_in_every_worker(tmp_path, jpeg):
    models = tmp_path / "models"
    old, gone = export(models), export(models, "gone")
    server = start(models, workers=2, FEATURES_ADMIN_KEY=ADMIN_KEY, FEATURES_API_KEY=API_KEY)
    try:
        for key in (None, "wrong", API_KEY):  # the data key opens no admin route, nor does a wrong one
            refused = admin_reload(server, key)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer", refused.text
        assert features(server, jpeg).json()["sha256"] == old

        new = export(models, step=1.0)
        shutil.rmtree(models / "gone")
        fresh = export(models, "fresh", step=2.0)
        answer = admin_reload(server)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "models": {
                "fresh": {"status": "added", "sha256": fresh, "previous_sha256": None, "error": None},
                "gone": {"status": "removed", "sha256": None, "previous_sha256": gone, "error": None},
                MODEL: {"status": "replaced", "sha256": new, "previous_sha256": old, "error": None},
            },
            "other_workers_signalled": True,
        }
        # the worker that answered reloads once more (finding nothing new), the other one once
        wait_until(lambda: logged(server, f"model {MODEL} replaced") == 2, DEADLINE_S, "both workers reloaded")
        wait_until(lambda: logged(server, "models reloaded: ") == 3, DEADLINE_S, "the master's SIGHUP followed")
        assert {features(server, jpeg).json()["sha256"] for _ in range(AFTER_RELOAD)} == {new}
        assert {features(server, jpeg, model="fresh").json()["sha256"] for _ in range(10)} == {fresh}
        assert {features(server, jpeg, model="gone").status_code for _ in range(10)} == {404}
        described = describe(server).json()
        assert described["sha256"] == new and described["reload"]["status"] == "replaced"
        assert described["reload"]["error"] is None and described["reload"]["at"]
        metrics = requests.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        assert f'features_model_reloads_total{{model="{MODEL}",result="replaced"}} 2.0' in metrics.text
        assert 'features_model_reloads_total{model="gone",result="removed"} 2.0' in metrics.text
    finally:
        server.stop()


def _unknown_op(graph: onnx.ModelProto) -> None:
    """A well-formed ONNX file that ONNX Runtime refuses: one node's operator does not exist."""
    next(node for node in graph.graph.node if node.op_type == "Relu").op_type = "NoSuchOp"


def _wrong_sha256(models: Path) -> None:
    export(models, step=1.0)
    write_manifest(models / MODEL, "0" * 64)


def _refused_by_onnx_runtime(models: Path) -> None:
    export(models, step=1.0, change=_unknown_op)  # its manifest names its true sha256


def _failing_warm_up(models: Path) -> None:
    write_manifest(models / MODEL, export(models, step=1.0), input_shape=[3, 32, 48])  # not the graph's input


BAD_EXPORTS = [(_wrong_sha256, "does not match its manifest"), (_refused_by_onnx_runtime, "NoSuchOp"),
               (_failing_warm_up, "invalid dimensions")]  # fmt: skip


def test_a_bad_export_leaves_the_old_model_serving_and_is_reported(tmp_path, jpeg):
    models = tmp_path / "models"
    old = export(models)
    server = start(models, workers=1, FEATURES_ADMIN_KEY=ADMIN_KEY)
    try:
        for write_bad_export, error in BAD_EXPORTS:
            case = write_bad_export.__name__
            write_bad_export(models)
            answer = admin_reload(server)
            assert answer.status_code == 422, (case, answer.text)
            problem = answer.json()
            assert answer.headers["Content-Type"] == "application/problem+json" and MODEL in problem["detail"]
            report = problem["models"][MODEL]
            assert report["status"] == "failed" and report["sha256"] == report["previous_sha256"] == old, case
            assert error in report["error"], (case, report["error"])
            assert features(server, jpeg).json()["sha256"] == old, case  # the old model keeps serving
            described = describe(server).json()
            assert described["sha256"] == old and described["ready"], case
            assert described["reload"]["status"] == "failed" and described["reload"]["error"] == report["error"]
        assert logged(server, f"reloading model {MODEL} failed, still serving {old[:12]}") == len(BAD_EXPORTS)

        new = export(models, step=1.0)  # fixed: the next reload serves it
        answer = admin_reload(server)
        assert answer.status_code == 200 and answer.json()["models"][MODEL]["status"] == "replaced", answer.text
        assert features(server, jpeg).json()["sha256"] == new
        reload = describe(server).json()["reload"]
        assert reload["status"] == "replaced" and reload["error"] is None
        assert "Traceback" not in server.output()
    finally:
        server.stop()
