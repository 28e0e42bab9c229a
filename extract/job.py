"""run(): one extraction job from inputs to finished files, whichever engine computes the features.

The driver owns the order and the writing: engines only turn rows into BatchResults, so the local,
server and Ray engines produce the same files through the same writer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from extract.errors import UsageError
from extract.inputs import list_sources
from extract.plan import local_model, make_plan
from extract.writers import JobOutput

ENGINES = ("local", "ray")
DEFAULT_BATCH_SIZE = 32


def default_models_dir() -> Path:
    return Path(os.environ.get("FEATURES_MODELS_DIR", "exported_models"))


def run(
    inputs,
    model: str,
    out,
    *,
    models_dir=None,
    levels=None,
    layers=None,
    pooling: str = "avg",
    format: str = "npy",
    dtype: str = "float32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    server: str | None = None,
    api_key: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    pool: str = "thread",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Extract features of every image in `inputs` into `out`; returns counts and images/s.

    Raises UsageError for arguments that cannot work and ExtractError when the run cannot go on; an
    interrupted run (KeyboardInterrupt included) keeps its finished batches for the next call.
    """
    started = time.perf_counter()
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    _check_numbers(batch_size, workers)
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r} is not one of {', '.join(ENGINES)}")
    if server and engine != "local":
        raise UsageError("--server sends the work to a running service; it does not combine with --engine ray")
    if format == "parquet":
        from extract.parquet import require_pyarrow

        require_pyarrow()
    sources = list_sources(inputs)
    client = None
    if server:
        try:
            from extract.server import ServerClient
        except ImportError as exc:
            raise UsageError(f"--server needs {exc.name}: pip install 'cnn-features[extract]'") from None
        client = ServerClient(server, api_key)
        info = client.model_info(model, models_dir)
    else:
        info = local_model(models_dir, model)
    plan = make_plan(sources, info, levels, layers, pooling, dtype, format)
    output = JobOutput(Path(out), plan)
    state = output.open(overwrite)
    summary = {"out": str(out), "inputs": len(sources), "state": state, "engine": "server" if server else engine}
    if state == "complete":
        done = output.summary()
        return {
            **summary,
            "rows": done["rows"],
            "failed": done["failed"],
            "processed": 0,
            "seconds": time.perf_counter() - started,
            "images_per_second": 0.0,
        }
    pending = output.pending_rows()
    try:
        processed, loop_seconds = _extract(
            output, pending, _engine(plan, client, engine, batch_size, workers, pool, ray_address), progress
        )
    finally:
        output.close()
    result = output.finish()
    return {
        **summary,
        "rows": result["rows"],
        "failed": result["failed"],
        "processed": processed,
        "resumed_from": len(sources) - len(pending),
        "seconds": time.perf_counter() - started,
        "images_per_second": processed / loop_seconds if loop_seconds else 0.0,
    }


def _check_numbers(batch_size: int, workers: int | None) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")


def _engine(plan, client, engine: str, batch_size: int, workers: int | None, pool: str, ray_address: str | None):
    if client is not None:
        from extract.server import ServerEngine

        return ServerEngine(plan, client, batch_size, workers)
    if engine == "ray":
        from extract.ray_engine import RayEngine

        return RayEngine(plan, batch_size, workers, ray_address)
    from extract.local import LocalEngine

    return LocalEngine(plan, batch_size, workers, pool)


def _extract(output: JobOutput, pending: list[int], engine, progress: bool) -> tuple[int, float]:
    """Feed every pending row through the engine into the writer; (images processed, seconds of the loop)."""
    from tqdm import tqdm

    total = len(output.plan.sources)
    processed = 0
    with (
        engine,
        tqdm(
            total=total,
            initial=total - len(pending),
            unit="img",
            disable=not progress,
            desc="extracting",
            smoothing=0.1,
            dynamic_ncols=True,
        ) as bar,
    ):
        loop_started = time.perf_counter()
        for result in engine.batches(pending):
            output.write(result)
            processed += result.count
            bar.update(result.count)
        loop_seconds = time.perf_counter() - loop_started
    return processed, loop_seconds
