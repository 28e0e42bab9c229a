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
# cores / workers, the usual advice (and what the service does), so no baseline loses to oversubscription:
# with each of 2 workers on 2 threads, PyTorch at concurrency 8 fell to 1 image/s.
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
