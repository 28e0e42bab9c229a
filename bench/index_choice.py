"""Which embedded vector store for nearest-neighbour search of image embeddings: measured, not guessed.

Two steps, two environments, one file:

    .venv/bin/python bench/index_choice.py embed              # real embeddings (onnxruntime, the engine package)
    /tmp/ixvenv/bin/python bench/index_choice.py compare      # the candidates (usearch, faiss, hnswlib, lancedb,
                                                              # sqlite-vec + apsw), writes bench/results/index_choice.json

`embed` runs the exported EfficientNet-Lite0 (/tmp/bench/models/efficientnet_lite0) on ~3,000 random views
(crops, flips, scales, JPEG/PNG re-encoding) of the scikit-image photos, preprocessed by the service's own
`engine.images.load_tensor`, and keeps the average-pooled outputs of `head` (1280-d) and the mid layer `stride16`
(112-d) in /tmp/ixdata/real_<layer>.npy.

`compare`, per dimension: draws --count base vectors (default 100,000) and 1,000 queries from a Gaussian with the
real embeddings' mean and covariance (seeded), uses the real embeddings as a second query set, computes the exact
cosine top-10 with numpy, then for each candidate, persisted to disk and reopened from disk as the service would:
build rate, size on disk, open time, recall@10 over a sweep of its search-time parameter, single-query p50/p95
(1 query per call, 1 thread) at the default and at the smallest setting reaching recall@10 >= 0.95, and whether
removing 1,000 ids really works (remove, persist, reopen, query: none of them may come back).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("/tmp/ixdata")
MODEL = Path("/tmp/bench/models/efficientnet_lite0/model.json")
RESULTS = Path(__file__).resolve().parent / "results" / "index_choice.json"
LAYERS = ("head", "stride16")  # high (1280-d) and mid (112-d) average-pooled outputs
SEED = 20240611
K = 10
TARGET = 0.95
PHOTOS = (
    "chelsea",
    "astronaut",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "moon",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "logo",
    "clock",
    "cell",
    "horse",
)


# --- embed (project venv) ------------------------------------------------------------------------------------------


def _photo(name: str):
    """A scikit-image photo as an RGB PIL image (grey, boolean and RGBA ones converted)."""
    import skimage.data
    from PIL import Image

    array = getattr(skimage.data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _random_view(image, rng: np.random.Generator) -> bytes:
    """A random crop (8-100 % of the area, aspect 3/4-4/3), flip and scale, encoded as JPEG or PNG."""
    from PIL import Image

    width, height = image.size
    area = width * height * rng.uniform(0.08, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = int(min(width, max(16, round(np.sqrt(area * aspect)))))
    crop_h = int(min(height, max(16, round(np.sqrt(area / aspect)))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    view = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.5, 1.5)
    view = view.resize((max(8, round(crop_w * scale)), max(8, round(crop_h * scale))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if rng.random() < 0.7:
        view.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    else:
        view.save(buffer, format="PNG")
    return buffer.getvalue()


def embed(views: int, batch: int = 32) -> None:
    """Real average-pooled embeddings of `views` random views, saved as /tmp/ixdata/real_<layer>.npy."""
    import onnxruntime as ort

    from engine.images import load_tensor
    from engine.manifest import load_verified

    manifest, onnx_path = load_verified(MODEL)
    outputs = [manifest.layer(name).outputs["avg"] for name in LAYERS]
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    photos = [_photo(name) for name in PHOTOS]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    started = time.perf_counter()
    for first in range(0, views, batch):
        count = min(batch, views - first)
        tensors = [load_tensor(_random_view(photos[(first + i) % len(photos)], rng), manifest.preprocess) for i in range(count)]
        results = session.run(outputs, {manifest.onnx.input: np.stack(tensors)})
        for name, result in zip(LAYERS, results, strict=True):
            collected[name].append(result.reshape(count, -1).astype(np.float32))
    DATA.mkdir(parents=True, exist_ok=True)
    facts = {"views": views, "photos": list(PHOTOS), "seed": SEED, "model": manifest.name, "layers": {}}
    for name, parts in collected.items():
        array = np.concatenate(parts)
        np.save(DATA / f"real_{name}.npy", array)
        facts["layers"][name] = {"output": manifest.layer(name).outputs["avg"], "dim": int(array.shape[1])}
    facts["seconds"] = round(time.perf_counter() - started, 1)
    facts["preprocess"] = "engine.images.load_tensor(view bytes, manifest.preprocess)"
    (DATA / "real.json").write_text(json.dumps(facts, indent=2))
    print(json.dumps(facts))



# --- data (candidates' venv) ---------------------------------------------------------------------------------------


def gaussian_like(real: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` float32 vectors from N(mean, cov) of `real`: the real spectrum, hence intrinsic dimension."""
    mean = real.mean(axis=0, dtype=np.float64)
    values, vectors = np.linalg.eigh(np.cov(real, rowvar=False))
    factor = (vectors * np.sqrt(np.clip(values, 0, None))).T.astype(np.float32)
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    for first in range(0, count, 20_000):
        block = rng.standard_normal((min(20_000, count - first), real.shape[1]), dtype=np.float32)
        out[first : first + len(block)] = block @ factor + mean.astype(np.float32)
    return out


def spectrum_facts(real: np.ndarray) -> dict:
    """Participation ratio and the components holding 90 % / 99 % of the variance: how 'low-dimensional' it is."""
    values = np.clip(np.linalg.eigvalsh(np.cov(real, rowvar=False))[::-1], 0, None)
    cumulative = np.cumsum(values) / values.sum()
    return {
        "participation_ratio": round(float(values.sum() ** 2 / (values**2).sum()), 1),
        "components_90pct_variance": int(np.searchsorted(cumulative, 0.90) + 1),
        "components_99pct_variance": int(np.searchsorted(cumulative, 0.99) + 1),
    }


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def exact_top(base: np.ndarray, queries: np.ndarray, depth: int = 2 * K, block: int = 256) -> np.ndarray:
    """Exact top-`depth` ids by cosine similarity (normalised dot products in blocks), best first."""
    base_unit = unit(base)
    out = np.empty((len(queries), depth), dtype=np.int64)
    for first in range(0, len(queries), block):
        sims = unit(queries[first : first + block]) @ base_unit.T
        top = np.argpartition(-sims, depth, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[first : first + block] = np.take_along_axis(top, order, axis=1)
    return out


def dataset(layer: str, count: int) -> dict:
    """Base, Gaussian and real queries and their exact top-20, cached in /tmp/ixdata per layer and count."""
    real = np.load(DATA / f"real_{layer}.npy").astype(np.float32)
    cache = DATA / f"set_{layer}_{count}_{SEED}.npz"
    if not cache.exists():
        rng = np.random.default_rng([SEED, real.shape[1], count])
        drawn = gaussian_like(real, count + 1_000, rng)
        base, gaussian = drawn[:count], drawn[count:]
        np.savez(
            cache, base=base, gaussian=gaussian, gt_gaussian=exact_top(base, gaussian), gt_real=exact_top(base, real)
        )
    stored = np.load(cache)
    return {"layer": layer, "dim": real.shape[1], "real": real, **{name: stored[name] for name in stored.files}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("embed", "compare"))
    parser.add_argument("--count", type=int, default=100_000, help="base vectors per dimension (compare)")
    parser.add_argument("--views", type=int, default=3_000, help="random photo views to embed (embed)")
    args = parser.parse_args()
    if args.step == "embed":
        embed(args.views)
    else:
        compare(args.count)


if __name__ == "__main__":
    main()
