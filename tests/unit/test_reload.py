"""The in-place reload (engine/reload.py) on the tiny model, in process: a retired model serves the requests that
hold it until they let go, and a folder that is gone changes nothing. Under gunicorn, with signals, load and
bad exports: tests/integration/test_reload.py."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from engine.manifest import load_manifest, sha256_of
from engine.registry import LoadedModel, Registry
from engine.reload import Reloader
from engine.settings import Settings
from tests.helpers import wait_until
from tests.unit import tiny_model


def _registry(models: Path) -> Registry:
    registry = Registry(Settings(models_dir=models, ort_threads=1, batch_images=2))
    registry.check()
    registry.load()
    return registry


def _new_version(models: Path) -> str:
    """The tiny export with other weights (its logits bias shifted) and its manifest updated; its sha256."""
    folder = models / tiny_model.NAME
    graph = onnx.load(folder / "model.onnx")
    bias = next(tensor for tensor in graph.graph.initializer if tensor.name == "logits.b")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1, "logits.b"))
    onnx.save(graph, folder / "model.onnx")
    manifest = load_manifest(folder / "model.json")
    text = (folder / "model.json").read_text().replace(manifest.onnx.sha256, sha256_of(folder / "model.onnx"))
    (folder / "model.json").write_text(text)
    return sha256_of(folder / "model.onnx")


def test_a_replaced_model_serves_the_requests_holding_it_then_closes(tmp_path):
    tiny_model.write(tmp_path)
    registry = _registry(tmp_path)
    old = registry.models[tiny_model.NAME]
    assert old.acquire()  # a request in flight
    new_sha256 = _new_version(tmp_path)
    reloader = Reloader(registry)
    reloaded = threading.Thread(target=reloader.reload)
    reloaded.start()
    try:
        wait_until(lambda: registry.models[tiny_model.NAME] is not old, 30, "the new model swapped in")
        new = registry.models[tiny_model.NAME]
        assert new.manifest.onnx.sha256 == new_sha256 and new.last_reload["status"] == "replaced"
        assert not old.acquire(), "a retired model takes no new holder"
        batch = np.zeros((1, *tiny_model.INPUT_SHAPE), dtype=np.float32)
        (logits,) = old.batcher.run(["logits"], batch)  # the holder still computes on the old model
        (shifted,) = new.batcher.run(["logits"], batch)
        np.testing.assert_allclose(shifted, logits + 1, rtol=1e-5, atol=1e-5)
        assert reloaded.is_alive() and old.runtime.graphs, "closed while a request held it"
    finally:
        old.release()
    reloaded.join(30)
    assert not reloaded.is_alive() and old.batcher.closed and not old.runtime.graphs
    registry.close()


def test_a_models_folder_that_is_gone_changes_nothing(tmp_path):
    models = tmp_path / "models"
    tiny_model.write(models)
    registry = _registry(models)
    serving = registry.models
    shutil.rmtree(models)
    report = Reloader(registry).reload()
    assert report.failed == [tiny_model.NAME] and "does not exist" in report.models[tiny_model.NAME].error
    assert registry.models is serving and serving[tiny_model.NAME].runtime.graphs
    registry.close()


def test_a_loaded_model_is_counted_per_holder():
    model = LoadedModel(manifest=None, path=Path("unused"))  # type: ignore[arg-type]
    assert model.acquire() and model.acquire()
    model.release()
    assert not model.retire(timeout=0.01), "one holder left"
    model.release()
    assert model.retire(timeout=0.01) and not model.acquire()
