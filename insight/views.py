"""Deterministic transformed views of a photo, cut at exactly the scale the service uses.

Every view (the plain one included) comes from one "context" crop: the service's resize, but a crop
MARGIN pixels wider on each side, so a shifted, zoomed-out or rotated view uses real photo pixels instead of
padding. Views are made in input pixels, so "shift 8 px" means 8 pixels of the network input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from engine.manifest import Preprocess
from engine.preprocess import preprocess_image

MARGIN = 16  # context pixels around the input crop: the largest shift, and room for zoom-out and rotation


@dataclass(frozen=True)
class View:
    kind: str  # the transform family, one line per family in the plots
    label: str  # this member's parameters
    make: Callable[[Image.Image, tuple[int, int]], Image.Image]  # (context, (width, height)) -> view


def _crop(context: Image.Image, size: tuple[int, int], dx: int = 0, dy: int = 0) -> Image.Image:
    width, height = size
    left = (context.width - width) // 2 + dx
    top = (context.height - height) // 2 + dy
    return context.crop((left, top, left + width, top + height))


def _shift(dx: int, dy: int) -> View:
    return View("shift", f"shift ({dx:+d}, {dy:+d}) px", lambda c, s: _crop(c, s, dx, dy))


def _rescale(zoom: float) -> View:
    def make(context: Image.Image, size: tuple[int, int]) -> Image.Image:
        width, height = size
        box_w, box_h = width / zoom, height / zoom
        left, top = (context.width - box_w) / 2, (context.height - box_h) / 2
        return context.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h))

    return View("rescale", f"zoom x{zoom:g}", make)


def _rotate(degrees: float) -> View:
    def make(context: Image.Image, size: tuple[int, int]) -> Image.Image:
        return _crop(context.rotate(degrees, resample=Image.Resampling.BICUBIC), size)

    return View("rotate", f"rotate {degrees:+g} deg", make)


def _enhance(name: str, factor: float) -> View:
    enhancer = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                "saturation": ImageEnhance.Color}[name]  # fmt: skip
    return View("colour", f"{name} x{factor:g}", lambda c, s: enhancer(_crop(c, s)).enhance(factor))


def _blur(radius: float) -> View:
    return View("blur", f"gaussian blur sigma {radius:g} px",
                lambda c, s: _crop(c.filter(ImageFilter.GaussianBlur(radius)), s))  # fmt: skip


PLAIN = View("plain", "centre crop", _crop)
VIEWS = (
    _shift(8, 0), _shift(0, -8), _shift(16, 16), _shift(-16, 0),
    View("flip", "horizontal flip", lambda c, s: _crop(c, s).transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    _rescale(1.15), _rescale(0.875),
    _rotate(8), _rotate(-8),
    _enhance("brightness", 1.25), _enhance("contrast", 0.7), _enhance("saturation", 0.5),
    _blur(1.0), _blur(2.0),
)  # fmt: skip
KINDS = tuple(dict.fromkeys(view.kind for view in VIEWS))


def select_views(quick: bool) -> tuple[View, ...]:
    """Every view, or with `quick` the first of each kind (still one figure per kind)."""
    if not quick:
        return VIEWS
    return tuple({view.kind: view for view in reversed(VIEWS)}[kind] for kind in KINDS)


def context_image(photo: Image.Image, preprocess: Preprocess) -> Image.Image:
    """The service's resize and centre crop, MARGIN pixels wider on every side, as an RGB image."""
    height, width = preprocess.size
    wider = replace(preprocess, size=[height + 2 * MARGIN, width + 2 * MARGIN], mean=[0.0] * 3, std=[1.0] * 3,
                    channels="RGB")  # fmt: skip
    pixels = preprocess_image(photo, wider).transpose(1, 2, 0)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def view_tensor(context: Image.Image, view: View, preprocess: Preprocess) -> np.ndarray:
    """One view as the network input: the service's own normalisation of an already input-sized image."""
    height, width = preprocess.size
    image = view.make(context, (width, height))
    assert image.size == (width, height), (view.label, image.size)
    return preprocess_image(image, replace(preprocess, resize=min(height, width)))  # no resampling at this size
