"""The --engine ray: the same decoding and ONNX Runtime code, spread over a Ray Data actor pool.

`ray.data.from_items` over the pending rows, `map_batches` with an actor class that holds one ONNX Runtime
session each (opened once, not per batch); results stream back to the driver, which writes them through
the same writer as the local engine, so the output files are the same. Paths must be readable where the
actors run (one machine, or a shared file system on a cluster). Each actor runs on the settings' providers and
sends back, with every batch, the provider that actually ran and why it is not the one asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from engine.settings import Settings
from extract.errors import ExtractError
from extract.plan import Plan
from extract.writers import BatchResult

log = logging.getLogger(__name__)


class _Extractor:
    """A Ray actor: one LocalModel on the settings' providers, reused for every batch it is given."""

    def __init__(self, plan: Plan, settings: Settings, threads: int):
        from extract.local import LocalModel

        self.plan = plan
        self.max_pixels = settings.max_pixels
        outputs = [layer.output for layer in plan.layers]
        self.model = LocalModel(plan.model.onnx_path, plan.model.manifest, outputs, settings.provider_list, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from extract.local import process_rows

        rows = [int(row) for row in batch["row"]]
        result = process_rows(self.model, self.plan, rows, [str(path) for path in batch["path"]], self.max_pixels)
        # Ray columns need one entry per input row: failed rows get zeros here and a reason in "error"
        errors = dict(result.failed)
        worked = np.isin(rows, result.rows)  # decode keeps the order, so the good rows line up
        runtime = self.model.runtime
        columns = {
            "row": np.asarray(rows, dtype=np.int64),
            "error": np.asarray([errors.get(row, "") for row in rows], dtype=object),
            "provider": np.asarray([runtime.provider] * len(rows), dtype=object),  # what ran, read back
            "warning": np.asarray(["; ".join(runtime.warnings)] * len(rows), dtype=object),
        }
        for index, (layer, array) in enumerate(zip(self.plan.layers, result.arrays, strict=True)):
            column = np.zeros((len(rows), *layer.shape), dtype=np.float32)
            column[worked] = array
            columns[f"layer{index}"] = column
        return columns


class RayEngine:
    """Actors each hold one session on the settings' providers; with CUDA asked for and GPUs in the Ray cluster,
    the actors share them (a fraction of a GPU each), since Ray hides the GPUs from actors that ask for none."""

    def __init__(self, plan: Plan, settings: Settings, batch_size: int, workers: int | None = None,
                 address: str | None = None):  # fmt: skip
        self.plan = plan
        self.settings = settings
        self.batch_size = batch_size
        self.workers = workers or os.cpu_count() or 1
        self.threads = settings.ort_threads or 1  # ONNX Runtime threads per actor, and the CPUs it reserves
        self.address = address
        self.started_ray = False
        self.providers: dict[str, int] = {}  # provider that ran -> rows
        self.warnings: list[str] = []

    @property
    def provider(self) -> str | None:
        """The provider the actors ran on (several, comma-separated, if they differed)."""
        return ", ".join(sorted(self.providers, key=self.providers.get, reverse=True)) or None

    def __enter__(self) -> RayEngine:
        import ray.data

        if not ray.is_initialized():
            options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
            if self.address:
                ray.init(address=self.address, **options)
            else:  # a local Ray limited to the workers asked for
                ray.init(num_cpus=self.workers * self.threads, **options)
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

    def _gpus_per_actor(self) -> float:
        import ray

        if self.settings.provider_list[0] != "CUDAExecutionProvider":
            return 0.0
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if not gpus:
            log.warning("CUDA was asked for, but the Ray cluster has no GPU; the actors run on the CPU")
            return 0.0
        return min(1.0, gpus / self.workers)

    def batches(self, pending: list[int]) -> Iterator[BatchResult]:
        import ray.data
        import ray.exceptions

        dataset = ray.data.from_items([{"row": row, "path": self.plan.sources[row]} for row in pending])
        gpus = self._gpus_per_actor()
        computed = dataset.map_batches(
            _Extractor,
            fn_constructor_kwargs={  # paths come per row
                "plan": replace(self.plan, sources=[]),
                "settings": self.settings,
                "threads": self.threads,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=self.threads,
            **({"num_gpus": gpus} if gpus else {}),
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
        for provider in batch["provider"]:
            self.providers[str(provider)] = self.providers.get(str(provider), 0) + 1
        for warning in dict.fromkeys(str(w) for w in batch["warning"] if w):
            if warning not in self.warnings:  # the actors' log does not reach the driver: said here, once
                self.warnings.append(warning)
                log.warning("Ray actor: %s", warning)
        errors = batch["error"]
        ok = np.asarray([not error for error in errors], dtype=bool)
        rows = np.asarray(batch["row"], dtype=np.int64)
        arrays = [np.asarray(batch[f"layer{i}"])[ok] for i in range(len(self.plan.layers))]
        failed = [(int(row), str(error)) for row, error in zip(rows, errors, strict=True) if error]
        return BatchResult(rows[ok], arrays, failed)
