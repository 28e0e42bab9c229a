"""Pictures of what a CNN layer sees, drawn with numpy and Pillow only (no plotting library on the server).

- `filter_grid`: first-convolution filters as small colour images, each scaled on its own so its pattern shows
  (zero weight is mid-grey, so the sign survives), enlarged with nearest-neighbour so single weights stay crisp.
- `activation_grid`: the strongest channels of a layer's map, upsampled to the input and laid over the very
  image the network saw, with the layer's level, stride and receptive field in the caption.
Sizes are fixed by formulas (see the functions) so clients and the OpenAPI document can rely on them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.manifest import Layer, Preprocess

FILTER_CELL = 48  # target size in pixels of one enlarged filter
FILTER_COLUMNS = 8
FILTER_GAP = 2
MAP_COLUMNS = 4
MAP_GAP = 4
MAP_HEADER = 40  # two caption lines
MAP_ALPHA = 0.6
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)

# viridis (perceptually uniform, colour-blind safe: dark blue low, yellow high), sampled at 9 evenly spaced points
_VIRIDIS = np.array(
    [
        [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
        [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
    ],
    dtype=np.float32,
)  # fmt: skip


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB through viridis, interpolated linearly between the samples."""
    position = np.clip(values, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(_VIRIDIS) - 1)
    weight = (position - low)[..., None]
    return (_VIRIDIS[low] * (1 - weight) + _VIRIDIS[high] * weight).round().astype(np.uint8)


# --- filters -------------------------------------------------------------------------------------------------


def filter_scale(kernel: int) -> int:
    """Nearest-neighbour enlargement per weight: a 3x3 filter becomes 48x48 pixels."""
    return max(1, FILTER_CELL // kernel)


def filter_grid_size(count: int, kernel_h: int, kernel_w: int) -> tuple[int, int]:
    """(width, height) of filter_grid: 8 columns of enlarged filters with 2-pixel gaps around each."""
    scale = filter_scale(max(kernel_h, kernel_w))
    columns = min(count, FILTER_COLUMNS)
    rows = math.ceil(count / columns)
    return columns * (kernel_w * scale + FILTER_GAP) + FILTER_GAP, rows * (kernel_h * scale + FILTER_GAP) + FILTER_GAP


def filter_grid(weights: np.ndarray, channels: str = "RGB") -> Image.Image:
    """[filters, 1 or 3, kh, kw] weights -> one RGB image of all filters (BGR models are shown as RGB)."""
    count, depth, kernel_h, kernel_w = weights.shape
    if depth == 1:
        weights = np.repeat(weights, 3, axis=1)
    elif channels == "BGR":
        weights = weights[:, ::-1]
    peak = np.abs(weights).max(axis=(1, 2, 3), keepdims=True)
    shown = 0.5 + 0.5 * weights / np.maximum(peak, 1e-12)  # zero -> grey, each filter uses the full range
    pixels = (shown.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    scale = filter_scale(max(kernel_h, kernel_w))
    width, height = filter_grid_size(count, kernel_h, kernel_w)
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    for index, tile in enumerate(pixels):
        row, column = divmod(index, FILTER_COLUMNS)
        enlarged = Image.fromarray(tile).resize((kernel_w * scale, kernel_h * scale), Image.Resampling.NEAREST)
        grid.paste(enlarged, (FILTER_GAP + column * (kernel_w * scale + FILTER_GAP),
                              FILTER_GAP + row * (kernel_h * scale + FILTER_GAP)))  # fmt: skip
    return grid


# --- activation maps -----------------------------------------------------------------------------------------


def input_pixels(tensor: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Undo the normalisation of a preprocessed [C, H, W] tensor: the RGB uint8 image the network saw."""
    std, mean = np.asarray(preprocess.std, np.float32), np.asarray(preprocess.mean, np.float32)
    pixels = tensor.transpose(1, 2, 0) * std + mean  # in the model's channel order
    if preprocess.channels == "BGR":
        pixels = pixels[:, :, ::-1]
    return np.clip(pixels, 0, 255).round().astype(np.uint8)


def strongest_channels(maps: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(channel, mean activation) of the k channels with the highest spatial mean, strongest first."""
    means = maps.mean(axis=(1, 2), dtype=np.float64)
    order = np.argsort(-means, kind="stable")[:k]
    return [(int(channel), float(means[channel])) for channel in order]


def overlay(background: np.ndarray, activation: np.ndarray, alpha: float) -> np.ndarray:
    """One [h, w] map stretched to its own min..max, upsampled (bilinear) and blended over the image.

    The image is shown in grey so every colour on the tile belongs to the map (viridis: dark blue low, yellow high).
    """
    height, width = background.shape[:2]
    low, high = float(activation.min()), float(activation.max())
    scaled = (activation - low) / (high - low) if high > low else np.zeros_like(activation)
    upsampled = np.asarray(
        Image.fromarray(scaled.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    )
    grey = background.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    colour = colormap(upsampled).astype(np.float32)
    blended = grey[..., None] * (1 - alpha) + colour * alpha
    return blended.round().astype(np.uint8)


@dataclass(frozen=True)
class MapsCaption:
    model: str
    layer: Layer

    def lines(self, shown: int) -> tuple[str, str]:
        layer = self.layer
        channels = layer.shape[0]
        return (
            f"{self.model} / {layer.name}  ·  level {layer.level}  ·  {channels} channels of "
            f"{layer.shape[1]}x{layer.shape[2]}",
            f"stride {layer.stride} px  ·  receptive field {layer.receptive_field} px  ·  "
            f"top {shown} channels by mean activation  ·  each map min..max, viridis",
        )


def maps_grid_size(k: int, input_height: int, input_width: int) -> tuple[int, int]:
    """(width, height) of activation_grid: up to 4 input-sized tiles per row, 4-pixel gaps, 40-pixel caption."""
    columns = min(k, MAP_COLUMNS)
    rows = math.ceil(k / columns)
    return columns * (input_width + MAP_GAP) + MAP_GAP, MAP_HEADER + rows * (input_height + MAP_GAP) + MAP_GAP


def activation_grid(
    background: np.ndarray, maps: np.ndarray, k: int, caption: MapsCaption, alpha: float = MAP_ALPHA
) -> Image.Image:
    """The top-k channels of [C, h, w] `maps` over the [H, W, 3] `background`, captioned, in one RGB image."""
    channels = strongest_channels(maps, min(k, len(maps)))
    height, width = background.shape[:2]
    grid = Image.new("RGB", maps_grid_size(len(channels), height, width), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font, small = _font(13), _font(12)
    for line, text in enumerate(caption.lines(len(channels))):
        draw.text((MAP_GAP + 2, 4 + 17 * line), text, fill=_TEXT, font=font)
    for index, (channel, mean) in enumerate(channels):
        row, column = divmod(index, MAP_COLUMNS)
        left = MAP_GAP + column * (width + MAP_GAP)
        top = MAP_HEADER + MAP_GAP + row * (height + MAP_GAP)
        grid.paste(Image.fromarray(overlay(background, maps[channel], alpha)), (left, top))
        label = f"channel {channel}  mean {mean:.3g}"
        box = draw.textbbox((left + 4, top + 3), label, font=small)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((left + 4, top + 3), label, fill=_TEXT, font=small)
    return grid
