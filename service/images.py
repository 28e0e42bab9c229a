"""Safe image decoding and the manifest's preprocessing: bytes -> RGB image -> float32 [C, H, W].

Decoding refuses empty, non-image, truncated and oversized (decompression-bomb) input with an ImageError;
large JPEGs are decoded at reduced scale (draft mode), and crop + resize happen in one resampling step.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.manifest import Preprocess

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 7,700 x 5,200 photo; above that, refuse before decoding

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageError(ValueError):
    """Input that is not a decodable image within the limits."""


def decode_image(data: bytes, preprocess: Preprocess | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode bytes into an upright RGB PIL image, or raise ImageError saying why not.

    With `preprocess`, JPEGs are decoded directly at the smallest power-of-two scale that still leaves
    the shorter side at least `preprocess.resize` pixels (libjpeg DCT scaling: ~10x faster on 12 MP).
    """
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
                )
            if preprocess is not None and image.format == "JPEG":
                image.draft("RGB", _draft_size(width, height, preprocess))
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF are)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image could not be decoded (truncated or corrupt): {exc}") from exc
    if image.mode != "RGB":
        image = _to_rgb(image)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (what a viewer shows) and convert any mode to RGB."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        return Image.fromarray((array * (255.0 / peak)).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _draft_size(width: int, height: int, preprocess: Preprocess) -> tuple[int, int]:
    scale = _scale(width, height, preprocess)
    return math.ceil(width * scale), math.ceil(height * scale)


def _scale(width: int, height: int, preprocess: Preprocess) -> float:
    """Resize factor so the shorter side reaches `resize` and the crop fits in both directions."""
    crop_h, crop_w = preprocess.size
    return max(preprocess.resize / min(width, height), crop_h / height, crop_w / width)


def preprocess_image(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """RGB image -> float32 [C, H, W]: resize the shorter side, centre crop, (x - mean) / std."""
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
    pixels = np.asarray(resized)  # uint8 [H, W, C]
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


def load_tensor(data: bytes, preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes straight to the network input for one image."""
    return preprocess_image(decode_image(data, preprocess, max_pixels), preprocess)
