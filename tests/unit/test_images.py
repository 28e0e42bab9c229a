"""Unit tests of safe decoding (engine.images) and preprocessing (engine.preprocess)."""

from __future__ import annotations

import io
import math
import subprocess
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageOps

from engine.decode_budget import DecodeBudget, DecodeBusy, ImageTooCostly
from engine.images import ImageError, decode_cost, decode_image, load_tensor
from engine.manifest import Preprocess
from engine.preprocess import draft_size, preprocess_image
from tests.helpers import encode, exif, photo

SPEC = Preprocess(size=[224, 224], resize=256, interpolation="bicubic", mean=[127.0] * 3, std=[128.0] * 3)


def cat(size=(451, 300)) -> Image.Image:
    return photo("chelsea").resize(size)


def test_preprocess_shape_dtype_and_range():
    tensor = preprocess_image(cat(), SPEC)
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
    assert preprocess_image(cat(), spec).shape == (3, 128, 256)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 not an image at all", "not a recognised image"),
        (encode(cat())[:3000], "truncated"),
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
    big = cat((3000, 2000))
    data = encode(big, quality=95)
    drafted = decode_image(data, SPEC)
    assert drafted.size[1] >= SPEC.resize and drafted.size[0] < 3000  # reduced, still large enough
    full = preprocess_image(decode_image(data), SPEC)
    fast = load_tensor(data, SPEC)
    assert np.abs(full - fast).mean() < 0.02  # in normalised units, i.e. ~2.5 grey levels on average


# --- the same pixels as before issue 12 ---------------------------------------------------------------------------


def legacy_decode(data: bytes, preprocess: Preprocess | None = None) -> Image.Image:
    """decode_image as it was before issue 12 (full-size float64 and RGBA copies): the reference for equality."""
    image = Image.open(io.BytesIO(data))
    if preprocess is not None and image.format == "JPEG":
        image.draft("RGB", draft_size(*image.size, preprocess))
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        return Image.fromarray((array * (255.0 / peak)).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


RNG = np.random.default_rng(12)


def noise(shape, high=256, dtype=np.uint8) -> np.ndarray:
    return RNG.integers(0, high, shape, dtype=dtype)


def palette_image(size=(97, 61)) -> Image.Image:
    image = Image.fromarray(noise(size[::-1], 16), "L").convert("P")
    image.putpalette(noise(48).tobytes())
    return image


SOURCES = {
    "I;16 PNG": lambda: encode(Image.fromarray(noise((61, 97), 60000, np.uint16)), "PNG"),
    "I;16B TIFF": lambda: encode(
        Image.frombytes("I;16B", (97, 61), noise((61, 97), 65536, np.uint16).astype(">u2").tobytes()), "TIFF"
    ),
    "I TIFF": lambda: encode(Image.fromarray(noise((61, 97), 1_000_000, np.int32), "I"), "TIFF"),
    "F TIFF": lambda: encode(Image.fromarray(RNG.uniform(-50, 300, (61, 97)).astype(np.float32)), "TIFF"),
    "1 PNG": lambda: encode(Image.fromarray(noise((61, 97), 2).astype(bool)), "PNG"),
    "L PNG": lambda: encode(Image.fromarray(noise((61, 97))), "PNG"),
    "LA PNG": lambda: encode(Image.fromarray(noise((61, 97, 2)), "LA"), "PNG"),
    "RGBA PNG": lambda: encode(Image.fromarray(noise((61, 97, 4)), "RGBA"), "PNG"),
    "P PNG": lambda: encode(palette_image(), "PNG"),
    "P PNG, tRNS alphas": lambda: encode(palette_image(), "PNG", transparency=noise(16).tobytes()),
    "P GIF, transparent index": lambda: encode(palette_image(), "GIF", transparency=3),
    "CMYK TIFF": lambda: encode(Image.fromarray(noise((61, 97, 4)), "CMYK"), "TIFF"),
    "CMYK JPEG": lambda: encode(Image.fromarray(noise((61, 97, 4)), "CMYK"), quality=90),
    "L JPEG": lambda: encode(cat().convert("L")),
    "RGB JPEG": lambda: encode(cat()),
    "RGB JPEG progressive": lambda: encode(cat(), progressive=True),
    "RGB WebP": lambda: encode(cat(), "WEBP"),
    "RGBA WebP lossless": lambda: encode(Image.fromarray(noise((61, 97, 4)), "RGBA"), "WEBP", lossless=True),
    "BMP": lambda: encode(cat(), "BMP"),
}


@pytest.mark.parametrize("source", SOURCES)
def test_decoded_pixels_are_those_of_the_previous_implementation(source):
    data = SOURCES[source]()
    expected = legacy_decode(data)
    assert_same_image(decode_image(data), expected)
    assert_same_image(decode_image(data, budget=DecodeBudget(1 << 30)), expected)  # estimating reads the headers


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    "make",
    [
        lambda o: encode(cat((97, 61)), exif=exif(o)),
        lambda o: encode(Image.fromarray(noise((61, 97), 60000, np.uint16)), "PNG", exif=exif(o)),
        lambda o: encode(Image.fromarray(noise((61, 97, 4)), "RGBA"), "PNG", exif=exif(o)),
        lambda o: encode(palette_image(), "PNG", exif=exif(o)),
        lambda o: encode(cat((97, 61)), "TIFF", exif=exif(o)),
        lambda o: encode(cat((97, 61)), "WEBP", exif=exif(o)),
    ],
    ids=["JPEG", "I;16 PNG", "RGBA PNG", "P PNG", "TIFF", "WebP"],
)
def test_exif_rotation_gives_the_same_pixels(make, orientation):
    data = make(orientation)
    expected = legacy_decode(data)
    assert_same_image(decode_image(data), expected)
    assert_same_image(decode_image(data, budget=DecodeBudget(1 << 30)), expected)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("source", ["I;16 PNG", "F TIFF", "1 PNG", "L PNG", "LA PNG", "L JPEG", "RGB JPEG", "RGBA PNG"])
def test_grey_images_resized_before_rgb_give_the_same_tensor(source, interpolation):
    spec = Preprocess(size=[40, 56], resize=48, interpolation=interpolation, mean=[127.0] * 3, std=[128.0] * 3)
    data = SOURCES[source]()
    expected = preprocess_image(legacy_decode(data, spec), spec)
    np.testing.assert_array_equal(load_tensor(data, spec), expected)
    np.testing.assert_array_equal(load_tensor(data, spec, budget=DecodeBudget(1 << 30)), expected)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("shorter_side", [300, 700, 1100, 2100])  # DCT scale 1, 1/2, 1/4, 1/8 for resize 256
def test_strict_jpeg_decoder_gives_pillows_draft_pixels(shorter_side, subsampling, progressive):
    width = shorter_side * 4 // 3 + 1
    data = encode(cat((width, shorter_side)), quality=88, subsampling=subsampling, progressive=progressive)
    drafted = decode_image(data, SPEC)
    assert_same_image(drafted, legacy_decode(data, SPEC))
    assert math.ceil(shorter_side / drafted.size[1]) in (1, 2, 4, 8)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (8, 3), (3, 9)])
def test_tiny_jpegs(size):
    data = encode(Image.fromarray(noise((size[1], size[0], 3))), quality=95)
    assert_same_image(decode_image(data), legacy_decode(data))


def assert_same_image(actual: Image.Image, expected: Image.Image) -> None:
    assert actual.mode == expected.mode == "RGB" and actual.size == expected.size
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


# --- only the documented formats ----------------------------------------------------------------------------------

UNDOCUMENTED = {
    "JPEG2000": "RGB",
    "TGA": "RGB",
    "ICO": "RGB",
    "PCX": "RGB",
    "PPM": "RGB",
    "SGI": "RGB",
    "DDS": "RGB",
    "EPS": "RGB",
    "IM": "RGB",
    "XBM": "1",
    "BLP": "P",
    "MSP": "1",
    "SPIDER": "F",
    "QOI": "RGB",
    "AVIF": "RGB",
    "DIB": "RGB",
    "ICNS": "RGB",
}


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", UNDOCUMENTED)
def test_undocumented_formats_are_refused_naming_the_accepted_ones(fmt):
    data = encode(Image.new("RGB", (64, 64), (10, 200, 30)).convert(UNDOCUMENTED[fmt]), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would decode it
    with pytest.raises(ImageError, match=r"\(JPEG, PNG, WebP, GIF, BMP, TIFF are\)"):
        decode_image(data)


def test_no_external_program_is_started(monkeypatch):
    started = []
    monkeypatch.setattr(subprocess.Popen, "__init__", lambda self, *args, **kwargs: started.append(args))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # as on a machine where Ghostscript was never looked up
    eps = encode(Image.new("RGB", (64, 64)), "EPS")
    with pytest.raises(ImageError):
        decode_image(eps)
    for source in SOURCES.values():
        decode_image(source())
    assert started == []


def test_multi_picture_jpegs_are_jpegs():
    data = encode(cat(), "MPO", save_all=True, append_images=[cat()])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert_same_image(decode_image(data), legacy_decode(data))


# --- truncated data -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_closed_with_an_end_marker_is_refused(progressive):
    data = encode(cat(), progressive=progressive)
    forged = data[: len(data) * 2 // 3] + b"\xff\xd9"
    Image.open(io.BytesIO(forged)).load()  # Pillow fills the missing part with grey and says nothing
    with pytest.raises(ImageError, match="truncated"):
        decode_image(forged)
    with pytest.raises(ImageError, match="truncated"):
        load_tensor(forged, SPEC)


@pytest.mark.parametrize("cut", [1, 100, 2000])
def test_cut_jpeg_is_refused(cut):
    with pytest.raises(ImageError, match="truncated"):
        decode_image(encode(cat())[:-cut])


def test_jpeg_warnings_that_lose_no_data_are_accepted():
    data = encode(cat())
    padded = data[:-2] + b"\x00\x00\x00" + data[-2:]  # "Corrupt JPEG data: 3 extraneous bytes before marker 0xd9"
    assert_same_image(decode_image(padded), legacy_decode(padded))


@pytest.mark.parametrize(
    "cut",
    [
        lambda data: data[:-12],  # the IEND chunk is missing: Pillow alone accepts this
        lambda data: data[:-1],
        lambda data: data[: data.index(b"IEND") - 200],  # inside the pixel data
        lambda data: data[: len(data) // 2],
    ],
    ids=["no IEND", "IEND cut", "IDAT cut", "half"],
)
def test_truncated_png_is_refused(cut):
    data = encode(cat(), "PNG")
    with pytest.raises(ImageError, match="truncated"):
        decode_image(cut(data))


def test_png_with_bytes_after_iend_is_accepted():
    data = encode(cat(), "PNG")
    assert_same_image(decode_image(data + b"trailing junk"), legacy_decode(data))


# --- the decode budget --------------------------------------------------------------------------------------------


def test_concurrent_decodes_never_hold_more_than_the_budget():
    data = encode(Image.new("I;16", (1500, 1000), 1000), "PNG")
    cost = decode_cost(Image.open(io.BytesIO(data)))
    budget = SpyBudget(cost * 2)
    threads = [threading.Thread(target=decode_image, args=(data,), kwargs={"budget": budget}) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert budget.reserved == [cost] * 6 and budget.most_in_use <= budget.total_bytes
    assert budget.free_bytes == budget.total_bytes


def test_an_image_over_the_budget_is_refused_before_decoding():
    hostile = encode(Image.new("I;16", (6300, 6300)), "PNG")  # the issue's 77 KB, 40 MP, 16-bit PNG
    assert len(hostile) < 100_000
    with pytest.raises(ImageTooCostly, match=r"needs \d+ MB to decode; this server decodes at most 100 MB"):
        decode_image(hostile, budget=DecodeBudget(100_000_000))


def test_a_full_budget_makes_decoding_wait_then_give_up():
    budget = DecodeBudget(1 << 30)
    with budget.reserve(1 << 30):
        started = time.monotonic()
        with pytest.raises(DecodeBusy, match=r"could not set \d+ MB aside within 0\.1 s; retry in 1 s"):
            load_tensor(encode(cat()), SPEC, budget=budget, timeout=0.1)
        assert time.monotonic() - started >= 0.1
    assert load_tensor(encode(cat()), SPEC, budget=budget, timeout=0.1).shape == (3, 224, 224)


def test_load_tensor_reserves_its_own_cost():
    data = encode(cat((1200, 900)))
    budget = SpyBudget(1 << 30)
    opened = Image.open(io.BytesIO(data))
    opened.draft("RGB", draft_size(*opened.size, SPEC))
    load_tensor(data, SPEC, budget=budget)
    assert budget.reserved == [decode_cost(opened, SPEC, rgb=False)]


class SpyBudget(DecodeBudget):
    """A DecodeBudget that records what it was asked for and the most it ever had out."""

    def __init__(self, total_bytes: int):
        super().__init__(total_bytes)
        self.reserved: list[int] = []
        self.most_in_use = 0

    @contextmanager
    def reserve(self, nbytes: int, timeout: float | None = None):
        with super().reserve(nbytes, timeout):
            self.reserved.append(nbytes)
            self.most_in_use = max(self.most_in_use, self.total_bytes - self.free_bytes)
            yield


# --- decode_cost on headers alone (the measured comparison is in test_memory.py) ------------------------------------


def test_jpeg_cost_counts_coefficients_only_for_several_scans():
    baseline = encode(cat((2400, 1600)))  # 4:2:0: the coefficients of 3.84 MP, 1.5 samples per pixel, 2 bytes
    coefficients = 2400 * 1600 * 3 // 2 * 2

    def cost(data: bytes) -> int:
        opened = Image.open(io.BytesIO(data))
        opened.draft("RGB", draft_size(*opened.size, SPEC))
        return decode_cost(opened, SPEC, rgb=False)

    second_scan = baseline[:-2] + b"\xff\xda" + baseline[-2:]  # a second start of scan before the end of image
    after_the_end = baseline + b"\xff\xda\x00\x08"  # what follows the end of image is not decoded
    progressive = encode(cat((2400, 1600)), progressive=True)
    assert coefficients < cost(second_scan) == cost(progressive) < coefficients + (8 << 20)  # + 600 x 400 drafted
    assert cost(after_the_end) == cost(baseline) < cost(second_scan) - coefficients / 2


def test_cost_of_the_issue_png_and_of_its_rgb_copy():
    opened = Image.open(io.BytesIO(encode(Image.new("I;16", (6300, 6300)), "PNG")))
    pixels = 6300 * 6300
    assert opened.mode == "I;16"
    assert 3 * pixels < decode_cost(opened, SPEC, rgb=False) < 3 * pixels + (16 << 20)  # I;16 + L + chunks
    assert 5 * pixels < decode_cost(opened) < 5 * pixels + (16 << 20)  # L + its RGB copy
