"""The fixed benchmark image set: real scikit-image photos as JPEGs of mixed sizes, written once per run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# (photo, longer side in pixels): the photos' own sizes plus two phone-camera-sized ones, so the
# set exercises both small uploads and JPEG draft-mode decoding of large ones.
PHOTOS = (
    ("chelsea", None),
    ("coffee", None),
    ("astronaut", None),
    ("rocket", None),
    ("hubble_deep_field", None),
    ("chelsea", 3000),
    ("coffee", 2000),
    ("astronaut", 1024),
)


def _array(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def jpeg(name: str, longer_side: int | None, quality: int = 90) -> bytes:
    image = Image.fromarray(_array(name)).convert("RGB")
    if longer_side:
        scale = longer_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_photos(folder: Path) -> list[Path]:
    """The benchmark set as files (the same bytes every run); returns their paths in a fixed order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, side in PHOTOS:
        path = folder / f"{name}-{side or 'orig'}.jpg"
        if not path.exists():
            path.write_bytes(jpeg(name, side))
        paths.append(path)
    return paths
