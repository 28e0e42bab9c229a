"""Unit tests of safe decoding and preprocessing (service.images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.images import ImageError, decode_image, load_tensor, preprocess_image
from service.manifest import Preprocess

SPEC = Preprocess(size=[224, 224], resize=256, interpolation="bicubic", mean=[127.0] * 3, std=[128.0] * 3)


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def photo(size=(451, 300)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea()).resize(size)


def test_preprocess_shape_dtype_and_range():
    tensor = preprocess_image(photo(), SPEC)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32 and tensor.flags["C_CONTIGUOUS"]
    assert tensor.min() >= -1.0 and tensor.max() <= 128 / 128


def test_preprocess_is_a_centre_crop():
    # left half red, right half blue: after a centre crop of a wide image both halves stay, split in the middle
    image = Image.new("RGB", (600, 300), (255, 0, 0))
    image.paste((0, 0, 255), (300, 0, 600, 300))
    tensor = preprocess_image(image, SPEC)
    assert tensor[0, 112, 50] > 0.9 and tensor[2, 112, 50] < -0.9
    assert tensor[2, 112, 170] > 0.9 and tensor[0, 112, 170] < -0.9


def test_non_square_network_input():
    spec = Preprocess(size=[128, 256], resize=160)
    assert preprocess_image(photo(), spec).shape == (3, 128, 256)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 not an image at all", "not a recognised image"),
        (encode(photo())[:3000], "truncated"),
    ],
)
def test_bad_bytes_are_refused(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (8000, 8000)), "PNG")  # 64 MP of zeros compresses to a few kB
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="above the limit"):
        decode_image(bomb, max_pixels=40_000_000)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(encode(image, exif=exif.tobytes()))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode):
    image = Image.new("RGB", (64, 48), (10, 200, 30)).convert(mode)
    data = encode(image, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    assert decode_image(data).mode == "RGB"


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode_image(encode(image, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_jpeg_draft_mode_decodes_large_images_smaller_but_close():
    big = photo((3000, 2000))
    data = encode(big, quality=95)
    drafted = decode_image(data, SPEC)
    assert drafted.size[1] >= SPEC.resize and drafted.size[0] < 3000  # reduced, still large enough
    full = preprocess_image(decode_image(data), SPEC)
    fast = load_tensor(data, SPEC)
    assert np.abs(full - fast).mean() < 0.02  # in normalised units, i.e. ~2.5 grey levels on average
