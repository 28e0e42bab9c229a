"""Finds exported_models/*/model.json, checks each ONNX file against its sha256, then opens and warms sessions.

`check` is fast and runs when the app is created (a bad export stops the worker with one clear line);
`load` is slow and runs in the background while /readyz answers 503.

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


@dataclass
class LoadedModel:
    manifest: Manifest
    path: Path
    runtime: OrtRuntime | None = None
    batcher: MicroBatcher | None = None

    @property
    def name(self) -> str:
        return self.manifest.name


@dataclass
class Registry:
    settings: Settings
    models: dict[str, LoadedModel] = field(default_factory=dict)
    batch_observer: Callable[[str], Callable[[int, float], None]] | None = None  # model name -> on_batch
    ready: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    _closing: threading.Event = field(default_factory=threading.Event, repr=False)
    _loader: threading.Thread | None = field(default=None, repr=False)

    def check(self) -> None:
        """Read every manifest and verify every ONNX file's sha256; Misconfigured on the first problem (a missing
        or empty folder, a broken export: engine/exports.py), whose detail is the one line start-up prints."""
        for manifest, onnx_path in open_exports(self.settings.models_dir):
            self.models[manifest.name] = LoadedModel(manifest, onnx_path)

    def load(self) -> None:
        """Open a session per model and run one warm-up batch; sets `ready` when all are done."""
        from engine.runtime import OrtRuntime  # here, not at the top: see the module docstring

        atexit.register(self.close)
        try:
            for model in self.models.values():
                if self._closing.is_set():
                    return
                started = time.perf_counter()
                runtime = OrtRuntime(
                    model.path,
                    self.settings.provider_list,
                    self.settings.intra_op_threads,
                    model.manifest.onnx.dynamic_batch,
                    prefix_models(
                        model.path, model.manifest, self.settings.prefix_graphs, self._pooled(model.manifest)
                    ),
                    spin=self.settings.ort_spin,
                )
                # warm up at the micro-batcher's largest batch: ONNX Runtime's arena grows to it now, not under load
                images = self.settings.batch_images if model.manifest.onnx.dynamic_batch else 1
                warmup = np.zeros((images, *model.manifest.onnx.input_shape), dtype=np.float32)
                for names, session in runtime.graphs:
                    session.run(sorted(names), {runtime.input_name: warmup})
                observer = self.batch_observer(model.name) if self.batch_observer else None
                model.batcher = MicroBatcher(runtime, self.settings.batch_images, self.settings.batch_wait_ms, observer)
                model.runtime = runtime
                log.info("model %s ready on %s in %.2fs", model.name, runtime.provider, time.perf_counter() - started)
            self.ready.set()
        except Exception as exc:  # logged and reported by /readyz; the worker keeps answering 503
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("loading models failed")

    def _pooled(self, manifest) -> bool:
        """Whether this model also gets a pooled graph (FEATURES_POOLED_GRAPHS): by default only int8 ones, where
        the gain pays for the extra copy of the weights (docs/operations.md)."""
        choice = self.settings.pooled_graphs
        return choice == "all" or (choice == "int8" and manifest.precision == "int8")

    def load_in_background(self) -> threading.Thread:
        self._loader = threading.Thread(target=self.load, name="model-loader", daemon=True)
        self._loader.start()
        return self._loader

    def close(self, timeout: float = 30.0) -> None:
        """Stop each model's batcher (queued jobs still run, later ones get a 503), then release its sessions.

        Idempotent; a load still under way stops before its next model and is waited for up to `timeout`.
        """
        self._closing.set()
        if self._loader is not None and self._loader is not threading.current_thread():
            self._loader.join(timeout)
        released = 0
        for model in self.models.values():
            if model.batcher is not None:
                model.batcher.close(timeout)
            if model.runtime is not None and model.runtime.graphs:
                model.runtime.close()
                released += 1
        if released and _logging_open():
            log.info("closed %d model(s): batchers stopped, sessions released", released)


def _logging_open() -> bool:
    """At exit an embedding program (a test runner) may have closed the stream the root logger writes to."""
    return not any(getattr(getattr(h, "stream", None), "closed", False) for h in logging.getLogger().handlers)
