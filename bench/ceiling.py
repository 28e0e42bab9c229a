"""The best in-process pipeline: decode + preprocess in a thread pool feeding batched ONNX Runtime runs.

No HTTP, no JSON: the most this machine can do with this model, which the service is measured against.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from engine.features import output_name
from engine.images import load_tensor
from engine.manifest import Manifest
from engine.subgraphs import exact_model


def session_and_outputs(
    manifest: Manifest, model_path: str, threads: int, pooled: bool | None = None
) -> tuple[ort.InferenceSession, list[str]]:
    """A session for the pooled embeddings on the graph the service would run: the whole model, or (`pooled`;
    by default for int8, as FEATURES_POOLED_GRAPHS does) the graph of just those outputs (engine/subgraphs.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    outputs = [output_name(layer, "avg") for layer in manifest.layers]
    pooled = manifest.precision == "int8" if pooled is None else pooled
    model = exact_model(model_path, manifest, outputs) if pooled else model_path
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]), outputs


def pipelined(manifest: Manifest, model_path: str, images: list[bytes], seconds: float, batch: int = 8) -> dict:
    """Images/s with decoding of batch n+1 overlapping inference of batch n."""
    cores = len(os.sched_getaffinity(0))
    session, outputs = session_and_outputs(manifest, model_path, cores)
    decoder = ThreadPoolExecutor(max_workers=cores)

    def decode(start: int):
        """One task per image, so every decoder thread works on the next batch."""
        return [decoder.submit(load_tensor, images[(start + i) % len(images)], manifest.preprocess)
                for i in range(batch)]  # fmt: skip

    def stack(futures) -> np.ndarray:
        return np.stack([future.result() for future in futures])

    session.run(outputs, {"input": stack(decode(0))})  # warm-up
    done, position = 0, 0
    pending = decode(position)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        ready = stack(pending)
        position += batch
        pending = decode(position)
        session.run(outputs, {"input": ready})
        done += batch
    elapsed = time.perf_counter() - started
    stack(pending)
    decoder.shutdown()
    return {"images": done, "seconds": elapsed, "images_per_s": done / elapsed, "batch": batch}


def compute(manifest: Manifest, model_path: str, images: list[bytes], seconds: float, batch: int = 8) -> dict:
    """Images/s of inference alone (decoded once, beforehand) on the graph of just the pooled outputs, whatever
    the precision: the model's own speed, where precisions differ."""
    session, outputs = session_and_outputs(manifest, model_path, len(os.sched_getaffinity(0)), pooled=True)
    tensors = np.stack([load_tensor(images[i % len(images)], manifest.preprocess) for i in range(batch)])
    session.run(outputs, {"input": tensors})
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(outputs, {"input": tensors})
        done += batch
    elapsed = time.perf_counter() - started
    return {"images": done, "seconds": elapsed, "images_per_s": done / elapsed, "batch": batch}


def sequential(manifest: Manifest, model_path: str, images: list[bytes], seconds: float) -> dict:
    """Per-image latency of decode + one batch-1 run: the least a single request can cost."""
    session, outputs = session_and_outputs(manifest, model_path, len(os.sched_getaffinity(0)))
    session.run(outputs, {"input": load_tensor(images[0], manifest.preprocess)[None]})
    latencies, index = [], 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or index < len(images):
        begin = time.perf_counter()
        session.run(outputs, {"input": load_tensor(images[index % len(images)], manifest.preprocess)[None]})
        latencies.append(time.perf_counter() - begin)
        index += 1
    return {
        "images": len(latencies),
        "images_per_s": len(latencies) / sum(latencies),
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3,
    }
