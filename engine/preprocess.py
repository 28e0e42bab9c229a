"""The manifest's preprocessing: upright image -> float32 [C, H, W] (resize, centre crop, mean/std), in one
resampling step. Shared by the service, batch extraction, the study and the exporter's verification.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from engine.manifest import Preprocess

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def draft_size(width: int, height: int, preprocess: Preprocess) -> tuple[int, int]:
    """The size a JPEG may be decoded at (draft mode) and still give the same crop and resize."""
    scale = _scale(width, height, preprocess)
    return math.ceil(width * scale), math.ceil(height * scale)


def _scale(width: int, height: int, preprocess: Preprocess) -> float:
    """Resize factor so the shorter side reaches `resize` and the crop fits in both directions."""
    crop_h, crop_w = preprocess.size
    return max(preprocess.resize / min(width, height), crop_h / height, crop_w / width)


def preprocess_image(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """Upright image -> float32 [C, H, W]: resize the shorter side, centre crop, (x - mean) / std.

    L images are resized first and made RGB after (bit-identical: bands are resampled independently), so a grey
    image is resampled at 1 byte per pixel instead of 4; any other mode is made RGB first.
    """
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    crop_h, crop_w = preprocess.size
    width, height = image.size
    scale = _scale(width, height, preprocess)
    box_w, box_h = crop_w / scale, crop_h / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    resized = image.resize(
        (crop_w, crop_h),
        _RESAMPLING[preprocess.interpolation],
        box=(left, top, left + box_w, top + box_h),
    )
    pixels = np.asarray(resized if resized.mode == "RGB" else resized.convert("RGB"))  # uint8 [H, W, C]
    if preprocess.channels == "BGR":
        pixels = pixels[:, :, ::-1]
    # One pass from uint8 HWC straight into float32 CHW, then one in-place scale: 0.08 ms instead of 0.5 ms
    # for four whole-array passes; this is why normalising inside the graph (uint8 input) would not pay.
    mean = np.asarray(preprocess.mean, dtype=np.float32)[:, None, None]
    inverse_std = (1.0 / np.asarray(preprocess.std, dtype=np.float32))[:, None, None]
    normalised = np.empty((pixels.shape[2], crop_h, crop_w), dtype=np.float32)
    np.subtract(pixels.transpose(2, 0, 1), mean, out=normalised, dtype=np.float32)
    normalised *= inverse_std
    return normalised
