"""ONNX Runtime session for one exported model: explicit providers and threads, provider read back.

Created inside each gunicorn worker after the fork (ONNX Runtime thread pools do not survive fork()). Even
importing this module belongs after the fork: `import onnxruntime` starts a native background thread owned by a
C++ static, and a forked child that inherits the static without the thread aborts at exit() when the static's
destructor joins it ("terminate called ... std::system_error: Invalid argument", issue 12). So the gunicorn
master never imports it (engine/registry.py imports it in `load`, which only workers run).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engine.errors import Unavailable

log = logging.getLogger(__name__)
_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


def _register_shared_cpu_arena() -> None:
    """One CPU arena for every session of the process instead of one each.

    A model is served by several prefix sub-graphs, each a session; with their own arenas, warming them all
    at batch 16 held 1.7 GB for EfficientNet-Lite0, with one shared arena 0.55 GB (measured here).
    """
    global _shared_arena_registered
    with _shared_arena_lock:
        if not _shared_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, None)
            _shared_arena_registered = True


class RuntimeClosed(Unavailable):
    """The sessions were released because the worker is stopping (503: the client retries elsewhere)."""

    def __init__(self) -> None:
        super().__init__("this worker is stopping; retry the request", retry_after=2)


class OrtRuntime:
    """run(output names, NCHW batch) -> arrays on the smallest prefix graph that holds them all.

    `provider` is what the session actually got (read back with get_providers(), never assumed).
    """

    def __init__(self, path: Path, providers: list[str], intra_op_threads: int, dynamic_batch: bool = True,
                 prefixes: list[tuple[list[str], bytes]] = (), spin: bool = True):  # fmt: skip
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = intra_op_threads
        # spin-waiting intra-op threads answer faster but burn the cores other threads decode on
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.options.inter_op_num_threads = 1
        self.options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.options.log_severity_level = 3
        _register_shared_cpu_arena()
        self.options.add_session_config_entry("session.use_env_allocators", "1")
        available = set(ort.get_available_providers())
        self.requested = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self.warnings: list[str] = []
        missing = [p for p in providers if p not in available]
        if missing:
            self.warnings.append(
                f"{', '.join(missing)} not available in this onnxruntime build; using {self.requested[0]}"
            )
        self.session = self._open(str(path))
        self.providers = self.session.get_providers()
        if providers[0] not in self.providers and not missing:
            self.warnings.append(f"{providers[0]} failed to load; running on {self.providers[0]}")
        for warning in self.warnings:
            log.warning("%s: %s", path.parent.name, warning)
        self.input_name = self.session.get_inputs()[0].name
        self.dynamic_batch = dynamic_batch
        # smallest first: the first prefix holding every requested output serves the request
        self.graphs = [(set(outputs), self._open(model)) for outputs, model in prefixes]
        self.graphs.append(({o.name for o in self.session.get_outputs()}, self.session))

    def close(self) -> None:
        """Release every session now, each joining its intra-op threads, while the interpreter is still whole.

        Idempotent. A run already under way holds its own reference and finishes first; later calls get
        RuntimeClosed instead of a session.
        """
        self.graphs = []
        self.session = None

    def _open(self, model) -> ort.InferenceSession:
        return ort.InferenceSession(model, self.options, providers=self.requested)

    @property
    def provider(self) -> str:
        return self.providers[0]

    def session_for(self, outputs: list[str]) -> ort.InferenceSession:
        if not self.graphs:
            raise RuntimeClosed()
        wanted = set(outputs)
        return next(session for names, session in self.graphs if wanted <= names)

    def run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        return self.run_session(self.session_for(outputs), outputs, batch)

    def run_session(self, session: ort.InferenceSession, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        """One run on a given graph; a fixed-batch model gets its inputs one at a time."""
        if self.dynamic_batch or len(batch) == 1:
            return session.run(outputs, {self.input_name: batch})
        runs = [session.run(outputs, {self.input_name: batch[i : i + 1]}) for i in range(len(batch))]
        return [np.concatenate([run[k] for run in runs]) for k in range(len(outputs))]
