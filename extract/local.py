"""The local engine: the service's own decoding and ONNX Runtime code, in this process.

A pool of decode workers reads, decodes and preprocesses the next batches (`engine.images.load_tensor`)
while the main thread runs ONNX Runtime on the current one, on the smallest prefix sub-graph that holds
every requested layer (`engine.subgraphs`), on the providers asked for, exactly as the service does for a
request. A file that cannot be used becomes a failed.csv row with its reason (`failure_reason`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.errors import FeaturesError
from engine.images import DEFAULT_MAX_PIXELS, load_tensor
from engine.manifest import Manifest, Preprocess
from engine.runtime import OrtRuntime
from engine.settings import Settings
from engine.subgraphs import exact_model
from extract.plan import Plan
from extract.writers import BatchResult

POOLS = ("thread", "process")


class LocalModel:
    """One ONNX Runtime session on the graph that computes just `outputs`, on the providers asked for.

    `runtime.provider` is the one that actually runs (CPU, with a warning in `runtime.warnings`, when CUDA was
    asked for but is not there), read back from the session as the service does.
    """

    def __init__(self, onnx_path: Path, manifest: Manifest, outputs: list[str], providers: list[str], threads: int):
        self.outputs = list(dict.fromkeys(outputs))
        exact = [(self.outputs, exact_model(onnx_path, manifest, self.outputs))]
        self.runtime = OrtRuntime(onnx_path, providers, threads, manifest.onnx.dynamic_batch, prefixes=exact)

    def infer(self, plan: Plan, batch: np.ndarray) -> list[np.ndarray]:
        """One array per plan layer, [len(batch), *shape]."""
        by_name = dict(zip(self.outputs, self.runtime.run(self.outputs, batch), strict=True))
        return [by_name[layer.output] for layer in plan.layers]


def failure_reason(exc: Exception) -> str:
    """Why a file became a failed.csv row: the one place where a per-image error turns into its reason."""
    if isinstance(exc, FeaturesError):  # undecodable, too many pixels, ...: the core's own words
        return exc.detail
    if isinstance(exc, OSError):
        return f"cannot read the file: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"  # one odd file must never stop a run over thousands


def decode_rows(rows: list[int], paths: list[str], preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(rows decoded, their [N, C, H, W] batch or None, [(row, reason)] for files that could not be used)."""
    good, tensors, failed = [], [], []
    for row, path in zip(rows, paths, strict=True):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            tensors.append(load_tensor(data, preprocess, max_pixels))
            good.append(row)
        except Exception as exc:
            failed.append((row, failure_reason(exc)))
    return good, (np.stack(tensors) if tensors else None), failed


def process_rows(model: LocalModel, plan: Plan, rows: list[int], paths: list[str], max_pixels: int) -> BatchResult:
    """Decode and infer in one go (the Ray actors' path; the local engine overlaps the two instead)."""
    good, batch, failed = decode_rows(rows, paths, plan.model.manifest.preprocess, max_pixels)
    return _result(model, plan, good, batch, failed)


def _result(model: LocalModel, plan: Plan, good: list[int], batch: np.ndarray | None, failed) -> BatchResult:
    arrays = model.infer(plan, batch) if batch is not None else [np.zeros((0, *layer.shape)) for layer in plan.layers]
    return BatchResult(np.asarray(good, dtype=np.int64), arrays, failed)


class LocalEngine:
    """Decode workers (threads or processes) feeding ONNX Runtime, which uses every core (or FEATURES_ORT_THREADS)
    on the providers of the settings (FEATURES_PROVIDERS, --providers)."""

    def __init__(
        self, plan: Plan, settings: Settings, batch_size: int, workers: int | None = None, pool: str = "thread"
    ):
        self.plan = plan
        self.settings = settings
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 1
        self.pool_kind = pool
        self.ort_threads = settings.ort_threads or os.cpu_count() or 1
        self.model: LocalModel | None = None
        self.pool: Executor | None = None

    @property
    def provider(self) -> str | None:
        """The execution provider that ran (read back from the session), once the engine is open."""
        return self.model.runtime.provider if self.model else None

    @property
    def warnings(self) -> list[str]:
        """Why it is not the provider asked for (also logged by the runtime when the session opens)."""
        return list(self.model.runtime.warnings) if self.model else []

    def __enter__(self) -> LocalEngine:
        plan = self.plan
        outputs = [layer.output for layer in plan.layers]
        self.model = LocalModel(
            plan.model.onnx_path, plan.model.manifest, outputs, self.settings.provider_list, self.ort_threads
        )
        pool_class = ProcessPoolExecutor if self.pool_kind == "process" else ThreadPoolExecutor
        self.pool = pool_class(self.workers)
        return self

    def __exit__(self, *exc_info) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.model is not None:  # sessions released now, not by ONNX Runtime's C++ destructors at exit()
            self.model.runtime.close()

    def batches(self, pending: list[int]) -> Iterator[BatchResult]:
        """Results in row order, while the next `workers + 1` batches are being decoded."""
        chunks = iter([pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)])
        preprocess = self.plan.model.manifest.preprocess
        sources = self.plan.sources
        in_flight: deque = deque()

        def submit() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                paths = [sources[r] for r in chunk]
                in_flight.append(self.pool.submit(decode_rows, chunk, paths, preprocess, self.settings.max_pixels))

        for _ in range(self.workers + 1):
            submit()
        while in_flight:
            good, batch, failed = in_flight.popleft().result()
            submit()
            yield _result(self.model, self.plan, good, batch, failed)
