"""The local engine: the service's own decoding and ONNX Runtime code, in this process.

A pool of decode workers reads, decodes and preprocesses the next batches (`engine.images.load_tensor`)
while the main thread runs ONNX Runtime on the current one, on the smallest prefix sub-graph that holds
every requested layer (`engine.subgraphs`), exactly as the service does for a request.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.images import DEFAULT_MAX_PIXELS, ImageError, load_tensor
from engine.manifest import Manifest, Preprocess
from engine.runtime import OrtRuntime
from engine.subgraphs import prefix_models
from extract.plan import Plan
from extract.writers import BatchResult

POOLS = ("thread", "process")


class LocalModel:
    """One ONNX Runtime session on the smallest graph that computes `outputs`."""

    def __init__(self, onnx_path: Path, manifest: Manifest, outputs: list[str], threads: int):
        self.outputs = list(dict.fromkeys(outputs))
        wanted = set(self.outputs)
        smallest = [prefix for prefix in prefix_models(onnx_path, manifest) if wanted <= set(prefix[0])][:1]
        self.runtime = OrtRuntime(
            onnx_path, ["CPUExecutionProvider"], threads, manifest.onnx.dynamic_batch, prefixes=smallest
        )

    def infer(self, plan: Plan, batch: np.ndarray) -> list[np.ndarray]:
        """One array per plan layer, [len(batch), *shape]."""
        by_name = dict(zip(self.outputs, self.runtime.run(self.outputs, batch), strict=True))
        return [by_name[layer.output] for layer in plan.layers]


def decode_rows(rows: list[int], paths: list[str], preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(rows decoded, their [N, C, H, W] batch or None, [(row, reason)] for files that could not be used)."""
    good, tensors, failed = [], [], []
    for row, path in zip(rows, paths, strict=True):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            tensors.append(load_tensor(data, preprocess, max_pixels))
            good.append(row)
        except ImageError as exc:
            failed.append((row, str(exc)))
        except OSError as exc:
            failed.append((row, f"cannot read the file: {exc.strerror or exc}"))
        except Exception as exc:  # one odd file must never stop a run over thousands
            failed.append((row, f"{type(exc).__name__}: {exc}"))
    return good, (np.stack(tensors) if tensors else None), failed


def process_rows(model: LocalModel, plan: Plan, rows: list[int], paths: list[str]) -> BatchResult:
    """Decode and infer in one go (the Ray actors' path; the local engine overlaps the two instead)."""
    good, batch, failed = decode_rows(rows, paths, plan.model.manifest.preprocess)
    return _result(model, plan, good, batch, failed)


def _result(model: LocalModel, plan: Plan, good: list[int], batch: np.ndarray | None, failed) -> BatchResult:
    arrays = model.infer(plan, batch) if batch is not None else [np.zeros((0, *layer.shape)) for layer in plan.layers]
    return BatchResult(np.asarray(good, dtype=np.int64), arrays, failed)


class LocalEngine:
    """Decode workers (threads or processes) feeding ONNX Runtime, which uses every core."""

    def __init__(
        self,
        plan: Plan,
        batch_size: int,
        workers: int | None = None,
        pool: str = "thread",
        ort_threads: int | None = None,
    ):
        self.plan = plan
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 1
        self.pool_kind = pool
        self.ort_threads = ort_threads or os.cpu_count() or 1
        self.model: LocalModel | None = None
        self.pool: Executor | None = None

    def __enter__(self) -> LocalEngine:
        plan = self.plan
        outputs = [layer.output for layer in plan.layers]
        self.model = LocalModel(plan.model.onnx_path, plan.model.manifest, outputs, self.ort_threads)
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
                in_flight.append(self.pool.submit(decode_rows, chunk, [sources[r] for r in chunk], preprocess))

        for _ in range(self.workers + 1):
            submit()
        while in_flight:
            good, batch, failed = in_flight.popleft().result()
            submit()
            yield _result(self.model, self.plan, good, batch, failed)
