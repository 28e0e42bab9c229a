"""Helpers both test tiers use, defined once: the repo root, photos and encoded images, polling, free ports.

Servers come from bench/servers.py (tests/integration/conftest.py wraps it); nothing here starts a process.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.servers import free_port

__all__ = ["REPO", "encode", "exif", "free_port", "photo", "photo_jpeg", "top5", "wait_until"]

REPO = Path(__file__).resolve().parent.parent


def photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos as an RGB image: the ones the exporter verifies exports on."""
    from exporter.verify import photo as load

    return load(name)


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    """An image as a client would upload it, in any format Pillow writes (options go to Image.save)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo_jpeg(name: str = "chelsea", quality: int = 90, size: tuple[int, int] | None = None) -> bytes:
    """A scikit-image photo as JPEG bytes, optionally resized to `size` (width, height) first."""
    image = photo(name)
    return encode(image.resize(size) if size else image, "JPEG", quality=quality)


def exif(orientation: int) -> bytes:
    """An EXIF block holding only an orientation tag (6: rotate 90° clockwise on display)."""
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def top5(logits: np.ndarray, labels: list[str]) -> list[str]:
    return [labels[i] for i in np.argsort(-logits)[:5]]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll `predicate` every 50 ms; returns the seconds it took (a liveness bound, not a timing assert)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")
