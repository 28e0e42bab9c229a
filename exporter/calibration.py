"""The photos a lower-precision export is calibrated on and the held-out photos it is judged on.

Both sets are real photos bundled with scikit-image, so they work offline and every export sees the same
pixels. They never overlap: the held-out set is judged after calibration and the choice of float nodes are
done, so its figures are what an unseen photo gets. Each photo contributes 17 views (the whole photo,
mirrored, crops at five scales), as a user's pictures differ in framing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from engine.images import ImageError, load_tensor
from engine.manifest import Preprocess
from engine.preprocess import preprocess_image
from exporter.errors import ExportError
from exporter.verify import photo

# Varied content for activation ranges: space, microscopy, a retina, greyscale scenes, textures and text.
CALIBRATION_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "camera", "clock", "coins", "brick",
                      "grass", "gravel", "moon", "page", "text")  # fmt: skip
# Among them, the float-convolution search is judged on the photographs (not the textures and text); its cosine
# criterion needs no labels, so greyscale serves.
VALIDATION_PHOTOS = ("camera", "clock", "coins", "hubble_deep_field", "retina")
# Every natural colour photo of ImageNet-like subjects scikit-image has, none of them in the calibration set:
# a cat, a rocket, a motorbike, a person, a coffee cup. Top-1 agreement flips on near-ties, so the more views
# the steadier its figure.
HELD_OUT_PHOTOS = ("chelsea", "rocket", "stereo_motorcycle", "astronaut", "coffee")
MIN_CALIBRATION_IMAGES = 8
MAX_CALIBRATION_IMAGES = 512  # ranges settle long before; more only costs export time
MAX_FILE_BYTES = 64 * 1024 * 1024
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def views(image: Image.Image) -> list[Image.Image]:
    """The photo, mirrored, and crops of 90 % down to 50 % of each side at the centre and two corners."""
    width, height = image.size
    out = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    for fraction in (0.9, 0.8, 0.7, 0.6, 0.5):
        w, h = round(width * fraction), round(height * fraction)
        for left, top in (((width - w) // 2, (height - h) // 2), (0, 0), (width - w, height - h)):
            out.append(image.crop((left, top, left + w, top + h)))
    return out


def photo_views(names: tuple[str, ...], preprocess: Preprocess) -> np.ndarray:
    return np.stack([preprocess_image(view, preprocess) for name in names for view in views(photo(name))])


def held_out(preprocess: Preprocess) -> np.ndarray:
    return photo_views(HELD_OUT_PHOTOS, preprocess)


def calibration(preprocess: Preprocess, folder: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The calibration batch, the validation batch (a part of it) and a line saying where they came from."""
    if folder is None:
        batch = photo_views(CALIBRATION_PHOTOS, preprocess)
        validation = photo_views(VALIDATION_PHOTOS, preprocess)
        return batch, validation, (f"{len(batch)} views of scikit-image's {', '.join(CALIBRATION_PHOTOS)}; "
                                   f"float convolutions chosen on those of {', '.join(VALIDATION_PHOTOS)}")  # fmt: skip
    files = image_files(folder)
    if len(files) < MIN_CALIBRATION_IMAGES:
        raise ExportError(f"--calibration {folder}: {len(files)} images found; give at least "
                          f"{MIN_CALIBRATION_IMAGES} ({', '.join(sorted(IMAGE_SUFFIXES))})")  # fmt: skip
    chosen = files
    if len(files) > MAX_CALIBRATION_IMAGES:  # evenly spaced in name order, and said so
        chosen = [files[i * len(files) // MAX_CALIBRATION_IMAGES] for i in range(MAX_CALIBRATION_IMAGES)]
    batch = np.stack([_load(path, preprocess) for path in chosen])
    used = f"{len(chosen)} of {len(files)} (evenly spaced by name)" if len(chosen) < len(files) else len(files)
    return batch, batch, f"{used} images in {folder}, which also chose the float convolutions"


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` in name order; symbolic links to folders are not followed (no loops)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--calibration {folder} is not a folder")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found += [Path(root) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _load(path: Path, preprocess: Preprocess) -> np.ndarray:
    """One calibration image, decoded within the service's limits; an unreadable one stops the export."""
    try:
        if not path.is_file():  # a FIFO or device would block or never end
            raise ExportError(f"calibration image {path}: not a regular file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ExportError(f"calibration image {path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        return load_tensor(path.read_bytes(), preprocess)
    except (OSError, ImageError) as exc:
        raise ExportError(f"calibration image {path}: {exc}") from exc
