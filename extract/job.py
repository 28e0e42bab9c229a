"""run(): one extraction job from inputs to finished files, whichever engine computes the features.

The driver owns the order and the writing: engines only turn rows into BatchResults (and say which execution
provider ran them), so the local, server and Ray engines produce the same files through the same writer.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from engine.settings import Settings
from extract import extras
from extract.errors import UsageError
from extract.index_sync import check_indexable, sync_index
from extract.inputs import list_sources
from extract.plan import local_model, make_plan
from extract.writers import JobOutput, fingerprint

ENGINES = ("local", "ray")
DEFAULT_BATCH_SIZE = 32


def run(
    inputs,
    model: str,
    out,
    *,
    settings: Settings | None = None,
    models_dir=None,
    levels=None,
    layers=None,
    pooling: str = "avg",
    format: str = "npy",
    dtype: str = "float32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    server: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    pool: str = "thread",
    overwrite: bool = False,
    update: bool = False,
    index: str | None = None,
    progress: bool = True,
) -> dict:
    """Extract features of every image in `inputs` into `out`; returns counts, images/s and the provider that ran.

    `settings` gives the models folder, execution providers, ONNX Runtime threads, pixel limit and the --server
    API key (Settings.from_env() when None); `models_dir` overrides its folder. Raises the project's errors
    (engine/errors.py): InvalidInput, UnknownName or Misconfigured for what cannot work, ExtractError
    (Unavailable) when the run cannot go on; an interrupted run (KeyboardInterrupt included) keeps its finished
    batches for the next call. `update` lets a finished `out` follow changed inputs, computing only new and
    changed files; `index` (a folder or a postgresql:// URL) implies it and then mirrors `out` into that index.
    """
    started = time.perf_counter()
    settings = settings or Settings.from_env()
    if models_dir:
        settings = replace(settings, models_dir=Path(models_dir))
    _check_numbers(batch_size, workers)
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if server and engine != "local":
        raise UsageError("--server sends the work to a running service; it does not combine with --engine ray")
    extras.check(progress=progress, format=format, server=server, engine=engine)
    sources = list_sources(inputs)
    client = None
    if server:
        from extract.server import ServerClient

        client = ServerClient(server, settings.api_key)
        info = client.model_info(model, settings.models_dir)
    else:
        info = local_model(settings.models_dir, model)
    plan = make_plan(sources, info, levels, layers, pooling, dtype, format)
    if index:
        check_indexable(plan)
    output = JobOutput(Path(out), plan, [fingerprint(path) for path in sources], update or bool(index))
    state = output.open(overwrite)
    summary = {"out": str(out), "inputs": len(sources), "state": state, "engine": "server" if server else engine,
               "precision": plan.model.precision, "carried": output.carried}  # fmt: skip
    if state == "complete":
        done = output.summary()
        return {
            **summary,
            "index": _sync(index, out, plan, overwrite),
            "rows": done["rows"],
            "failed": done["failed"],
            "processed": 0,
            "seconds": time.perf_counter() - started,
            "images_per_second": 0.0,
            "provider": None,
            "warnings": [],
        }
    pending = output.pending_rows()
    chosen = _engine(plan, settings, client, engine, batch_size, workers, pool, ray_address)
    try:
        processed, loop_seconds = _extract(output, pending, chosen, progress)
    finally:
        output.close()
    result = output.finish()
    return {
        **summary,
        "index": _sync(index, out, plan, overwrite),
        "rows": result["rows"],
        "failed": result["failed"],
        "processed": processed,
        "resumed_from": len(sources) - len(pending) - output.carried,
        "seconds": time.perf_counter() - started,
        "images_per_second": processed / loop_seconds if loop_seconds else 0.0,
        "provider": chosen.provider,  # what actually ran, read back from the sessions (or the server)
        "warnings": list(chosen.warnings),  # why that is not the provider asked for
    }


def _sync(index: str | None, out, plan, overwrite: bool) -> dict | None:
    return sync_index(index, Path(out), plan, replace=overwrite) if index else None


def _check_numbers(batch_size: int, workers: int | None) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")


def _engine(plan, settings: Settings, client, engine: str, batch_size: int, workers: int | None, pool: str,
            ray_address: str | None):  # fmt: skip
    if client is not None:
        from extract.server import ServerEngine

        return ServerEngine(plan, client, batch_size, workers)
    if engine == "ray":
        from extract.ray_engine import RayEngine

        return RayEngine(plan, settings, batch_size, workers, ray_address)
    from extract.local import LocalEngine

    return LocalEngine(plan, settings, batch_size, workers, pool)


def _extract(output: JobOutput, pending: list[int], engine, progress: bool) -> tuple[int, float]:
    """Feed every pending row through the engine into the writer; (images processed, seconds of the loop)."""
    total = len(output.plan.sources)
    processed = 0
    with engine, _progress_bar(total, total - len(pending), progress) as bar:
        loop_started = time.perf_counter()
        for result in engine.batches(pending):
            output.write(result)
            processed += result.count
            bar.update(result.count)
        loop_seconds = time.perf_counter() - loop_started
    return processed, loop_seconds


def _progress_bar(total: int, initial: int, progress: bool):
    """tqdm's bar (the `extract` extra), or with progress off a bar that shows nothing and needs no tqdm."""
    if not progress:
        return _NoBar()
    tqdm = extras.require("tqdm", "the progress bar (turn it off with --no-progress)").tqdm
    return tqdm(total=total, initial=initial, unit="img", desc="extracting", smoothing=0.1, dynamic_ncols=True)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def update(self, count: int) -> None:
        pass
