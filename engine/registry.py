"""Finds exported_models/*/model.json, checks each ONNX file against its sha256, then opens and warms sessions.

`check` is fast and runs when the app is created (a bad export stops the worker with one clear line);
`load` is slow and runs in the background while /readyz answers 503. A reload (engine/reload.py) later swaps
`models` for a new dict at once, so a reader that takes `models` once sees the old set or the new one, never a
mix; a model it takes out is closed by `retire` once no request holds it (LoadedModel.acquire).

`check` also runs in the gunicorn master (on_starting), so this module must not import onnxruntime at its top:
the import starts a native thread that fork() does not copy, and every worker then aborted at exit (issue 12).
`load` imports it, in the worker. `close`, registered with atexit by `load`, stops the batchers and releases the
sessions in order once the interpreter has joined the request threads, before C++ static destructors run.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.batcher import MicroBatcher
from engine.exports import open_exports
from engine.manifest import Manifest
from engine.settings import Settings
from engine.subgraphs import prefix_models

if TYPE_CHECKING:
    from engine.runtime import OrtRuntime

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    manifest: Manifest
    path: Path
    runtime: OrtRuntime | None = None
    batcher: MicroBatcher | None = None
    last_reload: dict | None = None  # {"status", "at", "error"}: the latest reload that changed or failed it
    _users: int = field(default=0, repr=False)
    _retired: bool = field(default=False, repr=False)
    _idle: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    def acquire(self) -> bool:
        """Hold the model for one request; False once a reload has retired it (take the registry's new one)."""
        with self._idle:
            if self._retired:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._idle:
            self._users -= 1
            self._idle.notify_all()

    def retire(self, timeout: float) -> bool:
        """Refuse new holders and wait until the last one lets go; False if some still held it after `timeout`."""
        with self._idle:
            self._retired = True
            return self._idle.wait_for(lambda: self._users == 0, timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the batcher (queued jobs still run, later ones get a 503), then release the sessions; True if
        there were sessions to release. Idempotent."""
        if self.batcher is not None:
            self.batcher.close(timeout)
        if self.runtime is None or not self.runtime.graphs:
            return False
        self.runtime.close()
        return True


@dataclass
class Registry:
    settings: Settings
    models: dict[str, LoadedModel] = field(default_factory=dict)
    batch_observer: Callable[[str], Callable[[int, float], None]] | None = None  # model name -> on_batch
    ready: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    changing: threading.Lock = field(default_factory=threading.Lock, repr=False)  # held by a reload, and by close
    _retiring: set[LoadedModel] = field(default_factory=set, repr=False)
    _closing: threading.Event = field(default_factory=threading.Event, repr=False)
    _loader: threading.Thread | None = field(default=None, repr=False)

    def check(self) -> None:
        """Read every manifest and verify every ONNX file's sha256; Misconfigured on the first problem (a missing
        or empty folder, a broken export: engine/exports.py), whose detail is the one line start-up prints."""
        for manifest, onnx_path in open_exports(self.settings.models_dir):
            self.models[manifest.name] = LoadedModel(manifest, onnx_path)

    def load(self) -> None:
        """Open a session per model and run one warm-up batch; sets `ready` when all are done."""
        atexit.register(self.close)
        try:
            for model in self.models.values():
                if self._closing.is_set():
                    return
                self.start(model)
            self.ready.set()
        except Exception as exc:  # logged and reported by /readyz; the worker keeps answering 503
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("loading models failed")

    def start(self, model: LoadedModel) -> None:
        """Open the model's sessions, warm them up and start its batcher; on any failure, release what was opened
        and raise (ONNX Runtime refusing the file, a warm-up that fails)."""
        from engine.runtime import OrtRuntime  # here, not at the top: see the module docstring

        started = time.perf_counter()
        manifest = model.manifest
        runtime = OrtRuntime(
            model.path,
            self.settings.provider_list,
            self.settings.intra_op_threads,
            manifest.onnx.dynamic_batch,
            prefix_models(model.path, manifest, self.settings.prefix_graphs, self._pooled(manifest)),
            spin=self.settings.ort_spin,
        )
        try:
            # warm up at the micro-batcher's largest batch: ONNX Runtime's arena grows to it now, not under load
            images = self.settings.batch_images if manifest.onnx.dynamic_batch else 1
            warmup = np.zeros((images, *manifest.onnx.input_shape), dtype=np.float32)
            for names, session in runtime.graphs:
                session.run(sorted(names), {runtime.input_name: warmup})
        except Exception:
            runtime.close()
            raise
        observer = self.batch_observer(model.name) if self.batch_observer else None
        model.batcher = MicroBatcher(runtime, self.settings.batch_images, self.settings.batch_wait_ms, observer)
        model.runtime = runtime
        log.info("model %s ready on %s in %.2fs", model.name, runtime.provider, time.perf_counter() - started)

    def _pooled(self, manifest) -> bool:
        """Whether this model also gets a pooled graph (FEATURES_POOLED_GRAPHS): by default only int8 ones, where
        the gain pays for the extra copy of the weights (docs/operations.md)."""
        choice = self.settings.pooled_graphs
        return choice == "all" or (choice == "int8" and manifest.precision == "int8")

    def load_in_background(self) -> threading.Thread:
        self._loader = threading.Thread(target=self.load, name="model-loader", daemon=True)
        self._loader.start()
        return self._loader

    def wait_loaded(self) -> None:
        """Until the first load has ended (it may still be running in the background)."""
        if self._loader is not None and self._loader is not threading.current_thread():
            self._loader.join()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def retire(self, model: LoadedModel, timeout: float) -> None:
        """Close a model a reload took out of `models` once the requests holding it let go; after `timeout`,
        close it anyway (those requests then get a 503) and say so."""
        self._retiring.add(model)
        try:
            if not model.retire(timeout):
                log.warning("model %s (%s…) still held after %.0fs; closing it anyway", model.name,
                            model.manifest.onnx.sha256[:12], timeout)  # fmt: skip
            model.close(timeout)
            log.info("model %s (%s…) retired: batcher stopped, sessions released", model.name,
                     model.manifest.onnx.sha256[:12])  # fmt: skip
        finally:
            self._retiring.discard(model)

    def close(self, timeout: float = 30.0) -> None:
        """Stop each model's batcher (queued jobs still run, later ones get a 503), then release its sessions.

        Idempotent; a load or reload still under way stops before its next model and is waited for up to `timeout`.
        """
        self._closing.set()
        if self._loader is not None and self._loader is not threading.current_thread():
            self._loader.join(timeout)
        changing = self.changing.acquire(timeout=timeout)
        try:
            released = sum(model.close(timeout) for model in [*self.models.values(), *list(self._retiring)])
        finally:
            if changing:
                self.changing.release()
        if released and _logging_open():
            log.info("closed %d model(s): batchers stopped, sessions released", released)


def _logging_open() -> bool:
    """At exit an embedding program (a test runner) may have closed the stream the root logger writes to."""
    return not any(getattr(getattr(h, "stream", None), "closed", False) for h in logging.getLogger().handlers)
