"""The preprocessing a hand-written route typically does: PIL full decode, resize, centre crop, normalise."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", "exported_models/efficientnet_lite0"))
MANIFEST = json.loads((MODEL_DIR / "model.json").read_text())
PRE = MANIFEST["preprocess"]
# The library's intra-op threads; 0 keeps its own default (one per core), what a user who never sets it gets.
# bench/baseline_sweep.py tries both, and reports the faster: the default oversubscribes the cores as soon as
# two requests run at once (PyTorch with each of 2 workers on 2 threads fell to 1 image/s at concurrency 8).
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def preprocess(data: bytes) -> np.ndarray:
    """[1, 3, H, W] float32, as in the manifest (no draft mode, two resampling steps: the usual recipe)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = PRE["resize"] / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    height, width = PRE["size"]
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = (np.asarray(image, dtype=np.float32) - np.array(PRE["mean"], np.float32)) / np.array(
        PRE["std"], np.float32
    )
    return pixels.transpose(2, 0, 1)[None].copy()
