"""python -m bench.search [--models-dir D] [--count 100000] [--quick] [--out bench/results]

The embedded search index at scale, through the project's own code (engine.vector_index.EmbeddedIndex):
build rate (vectors/s through a Writer, commit included), recall@10 against exact cosine search, and the latency
of one query as a request makes it (one query vector, one thread, the index memory-mapped as a worker maps it).

The vectors: real average-pooled EfficientNet-Lite0 embeddings of crops and flips of scikit-image photos fix the
distribution; `--count` vectors are then drawn from a Gaussian with the real ones' mean and covariance, so the
index sees the spectrum (the intrinsic dimension) of real embeddings at a size this machine has no photos for.
Recall is measured for queries drawn the same way and for the real embeddings themselves. --quick: 12,000
vectors (past the exact-scan limit of 10,000) and fewer queries, to check the harness. Results: search.json
and search.md in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from engine.exports import open_export
from engine.features import output_name
from engine.preprocess import preprocess_image
from engine.vector_index import CollectionSpec
from engine.vector_index.embedded import CONNECTIVITY, EXACT_UP_TO, EXPANSION_SEARCH, STORED_DTYPE, EmbeddedIndex

REPO = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"
LAYERS = ("stride16", "head")  # a mid layer (112 values) and the last feature map (1280)
PHOTOS = (
    "chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "immunohistochemistry", "retina", "moon",
    "hubble_deep_field", "page", "text", "brick", "grass", "gravel", "horse", "clock", "cell",
)  # fmt: skip
K = 10
ADD_BLOCK = 8192
QUICK_COUNT = EXACT_UP_TO + 2_000  # just above the exact-scan limit, so that the HNSW path is what runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "exported_models")
    parser.add_argument("--count", type=int, default=100_000, help="vectors in the index")
    parser.add_argument("--queries", type=int, default=1000, help="timed single queries")
    parser.add_argument("--views", type=int, default=900, help="real crops and flips that fix the distribution")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT:,} vectors, 100 queries, 160 views")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.queries, args.views = QUICK_COUNT, 100, 160
    return args


def _photos() -> list[Image.Image]:
    import skimage.data

    images = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        images.append(Image.fromarray(array).convert("RGB"))
    return images


def _view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    side = rng.uniform(0.4, 1.0)
    crop_w, crop_h = max(48, int(width * side)), max(48, int(height * rng.uniform(0.4, 1.0)))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    view = image.crop((left, top, left + crop_w, top + crop_h))
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def real_embeddings(models_dir: Path, views: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Average-pooled vectors of `views` random crops and flips of the photos, per layer."""
    from extract.local import LocalModel

    manifest, onnx_path = open_export(models_dir, MODEL)
    layers = {layer.name: layer for layer in manifest.layers if layer.name in LAYERS}
    outputs = [output_name(layers[name], "avg") for name in LAYERS]
    model = LocalModel(onnx_path, manifest, outputs, ["CPUExecutionProvider"], os.cpu_count() or 1)
    rng = np.random.default_rng(seed)
    photos = _photos()
    found: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    try:
        for start in range(0, views, 16):
            batch = np.stack([preprocess_image(_view(photos[(start + i) % len(photos)], rng), manifest.preprocess)
                              for i in range(min(16, views - start))])  # fmt: skip
            by_name = dict(zip(outputs, model.runtime.run(outputs, batch), strict=True))
            for name, output in zip(LAYERS, outputs, strict=True):
                found[name].append(by_name[output].reshape(len(batch), -1))
    finally:
        model.runtime.close()
    return {name: np.concatenate(arrays).astype(np.float32) for name, arrays in found.items()}


def gaussian_like(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` vectors from the Gaussian with the real vectors' mean and covariance."""
    mean = real.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(real, rowvar=False))
    scale = vectors * np.sqrt(np.clip(values, 0, None))
    drawn = np.empty((count, real.shape[1]), dtype=np.float32)
    for start in range(0, count, 20_000):
        size = min(20_000, count - start)
        drawn[start : start + size] = mean + rng.standard_normal((size, real.shape[1])) @ scale.T
    return drawn


def exact_top(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k most cosine-similar database rows per query, by brute force in blocks."""
    unit = database / np.linalg.norm(database, axis=1, keepdims=True)
    asked = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    top = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        scores = asked[start : start + 256] @ unit.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        top[start : start + 256] = np.take_along_axis(part, order, axis=1)
    return top


def measure_layer(name: str, real: np.ndarray, count: int, queries: int, folder: Path, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    database = gaussian_like(real, count, rng)
    asked = gaussian_like(real, queries, rng)
    paths = [f"/photos/{i:07d}.jpg" for i in range(count)]
    spec = CollectionSpec(MODEL, "0" * 64, "avg", {name: database.shape[1]}, "/bench/out")
    index = EmbeddedIndex(folder / name)
    started = time.perf_counter()
    with index.writer(spec) as writer:
        for start in range(0, count, ADD_BLOCK):
            block = slice(start, start + ADD_BLOCK)
            writer.add(paths[block], ["1:1"] * len(paths[block]), {name: database[block]})
    build_seconds = time.perf_counter() - started
    index.close()

    reader = EmbeddedIndex(folder / name)  # a worker's view: the files memory-mapped afresh
    row_of = {path: row for row, path in enumerate(paths)}
    for query in asked[:20]:  # warm-up: the first queries fault the mapped pages in
        reader.search(MODEL, "avg", name, query[None], K)
    latencies, found = [], []
    for query in asked:
        began = time.perf_counter()
        (neighbours,) = reader.search(MODEL, "avg", name, query[None], K)
        latencies.append((time.perf_counter() - began) * 1e3)
        found.append([row_of[n.path] for n in neighbours])
    real_found = [[row_of[n.path] for n in hits] for hits in reader.search(MODEL, "avg", name, real, K)]
    reader.close()
    latencies.sort()
    return {
        "layer": name,
        "dim": int(database.shape[1]),
        "vectors": count,
        "build_seconds": round(build_seconds, 2),
        "build_vectors_per_s": round(count / build_seconds),
        "disk_mib": round(sum(p.stat().st_size for p in (folder / name).rglob("*") if p.is_file()) / 2**20, 1),
        "recall_at_10": round(_recall(found, exact_top(database, asked, K)), 4),
        "recall_at_10_real_queries": round(_recall(real_found, exact_top(database, real, K)), 4),
        "query_ms_p50": round(statistics.median(latencies), 3),
        "query_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "queries": len(latencies),
    }


def _recall(found: list[list[int]], exact: np.ndarray) -> float:
    return float(np.mean([len(set(hits) & set(truth.tolist())) / K for hits, truth in zip(found, exact, strict=True)]))


def report(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Embedded index (USearch HNSW, {meta['stored']}, connectivity {meta['connectivity']}, expansion_search "
        f"{meta['expansion_search']}) on {meta['cores']} cores; {meta['views']} real views fix the distribution.",
        "",
        "| layer | dim | vectors | build (vectors/s) | disk MiB | recall@10 | recall@10, real queries "
        "| p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['layer']} | {r['dim']} | {r['vectors']:,} | {r['build_vectors_per_s']:,} | {r['disk_mib']} | "
        f"{r['recall_at_10']:.3f} | {r['recall_at_10_real_queries']:.3f} | {r['query_ms_p50']:.2f} | "
        f"{r['query_ms_p95']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    real = real_embeddings(args.models_dir, args.views)
    meta = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "stored": STORED_DTYPE,
        "connectivity": CONNECTIVITY,
        "expansion_search": EXPANSION_SEARCH,
        "views": args.views,
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="bench-search-") as scratch:
        rows = [measure_layer(name, real[name], args.count, args.queries, Path(scratch), seed)
                for seed, name in enumerate(LAYERS)]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps({"meta": meta, "layers": rows}, indent=2) + "\n")
    table = report(rows, meta)
    (args.out / "search.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
