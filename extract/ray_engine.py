"""The --engine ray: the same decoding and ONNX Runtime code, spread over a Ray Data actor pool.

`ray.data.from_items` over the pending rows, `map_batches` with an actor class that holds one ONNX Runtime
session each (opened once, not per batch); results stream back to the driver, which writes them through
the same writer as the local engine, so the output files are the same. Paths must be readable where the
actors run (one machine, or a shared file system on a cluster).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from extract.errors import ExtractError, UsageError
from extract.plan import Plan
from extract.writers import BatchResult


class _Extractor:
    """A Ray actor: one LocalModel, reused for every batch it is given."""

    def __init__(self, plan: Plan, threads: int):
        from extract.local import LocalModel

        self.plan = plan
        self.model = LocalModel(
            plan.model.onnx_path, plan.model.manifest, [layer.output for layer in plan.layers], threads
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from extract.local import process_rows

        rows = [int(row) for row in batch["row"]]
        result = process_rows(self.model, self.plan, rows, [str(path) for path in batch["path"]])
        # Ray columns need one entry per input row: failed rows get zeros here and a reason in "error"
        errors = dict(result.failed)
        worked = np.isin(rows, result.rows)  # decode keeps the order, so the good rows line up
        columns = {
            "row": np.asarray(rows, dtype=np.int64),
            "error": np.asarray([errors.get(row, "") for row in rows], dtype=object),
        }
        for index, (layer, array) in enumerate(zip(self.plan.layers, result.arrays, strict=True)):
            column = np.zeros((len(rows), *layer.shape), dtype=np.float32)
            column[worked] = array
            columns[f"layer{index}"] = column
        return columns


class RayEngine:
    def __init__(self, plan: Plan, batch_size: int, workers: int | None = None, address: str | None = None):
        try:
            import ray.data  # noqa: F401
        except ImportError:
            raise UsageError("--engine ray needs Ray: pip install 'cnn-features[extract]' (or 'ray[data]')") from None
        self.plan = plan
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 1
        self.address = address
        self.started_ray = False

    def __enter__(self) -> RayEngine:
        import ray

        if not ray.is_initialized():
            options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
            if self.address:
                ray.init(address=self.address, **options)
            else:  # a local Ray limited to the workers asked for
                ray.init(num_cpus=self.workers, **options)
            self.started_ray = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's tqdm bar is the progress
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc_info) -> None:
        import ray

        if self.started_ray:
            ray.shutdown()

    def batches(self, pending: list[int]) -> Iterator[BatchResult]:
        import ray.data
        import ray.exceptions

        dataset = ray.data.from_items([{"row": row, "path": self.plan.sources[row]} for row in pending])
        computed = dataset.map_batches(
            _Extractor,
            fn_constructor_kwargs={"plan": replace(self.plan, sources=[]), "threads": 1},  # paths come per row
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=1,
        )
        batches = iter(computed.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
        while True:
            try:
                batch = next(batches, None)
            except ray.exceptions.RayError as exc:  # an actor that could not start or crashed
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExtractError(f"Ray failed: {first}") from None
            if batch is None:
                return
            yield self._result(batch)

    def _result(self, batch: dict[str, np.ndarray]) -> BatchResult:
        errors = batch["error"]
        ok = np.asarray([not error for error in errors], dtype=bool)
        rows = np.asarray(batch["row"], dtype=np.int64)
        arrays = [np.asarray(batch[f"layer{i}"])[ok] for i in range(len(self.plan.layers))]
        failed = [(int(row), str(error)) for row, error in zip(rows, errors, strict=True) if error]
        return BatchResult(rows[ok], arrays, failed)
