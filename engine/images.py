"""Safe image decoding: bytes -> upright image within a pixel limit and a memory budget (then engine/preprocess.py).

What a hostile upload can cost is bounded before anything is decoded (issue 12):
- only the documented formats are opened (JPEG, PNG, WebP, GIF, BMP, TIFF): no plugin for an obscure format
  parses the bytes, and none of these six hands data to an external program (EPS would go to Ghostscript);
- the pixel count is checked first, then `decode_cost` estimates the peak bytes that decoding and converting
  *this* image will allocate (bit depth, bands, decoder buffers, our own copies), and a worker-wide
  `DecodeBudget` lets only so many bytes of decoding run at once: the issue's 77 KB 16-bit PNG of 40 MP costs
  125 MB through load_tensor (0.76 GB before), a lossless WebP of 20 MP in a few dozen bytes 400 MB, and eight
  at once must queue instead of taking the worker down;
- the copies are few: conversions to 8 bits run in row chunks (no full-size float64 or RGBA temporaries), EXIF
  rotation is applied to whichever of the decoded or converted image is smaller, and grey images stay single-channel
  until after the resize (channels are resampled independently, so the result is bit-identical);
- truncated data is refused where the decoder can tell: JPEGs are decoded by libjpeg-turbo through simplejpeg in
  strict mode (Pillow hides libjpeg's "Premature end of JPEG file" and fills grey), at the same DCT scale and with
  the same pixels as Pillow's draft mode, at no extra cost; PNGs must reach their IEND chunk.
Large JPEGs are decoded at reduced scale (draft mode), just above what the manifest's resize needs.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from engine.decode_budget import DecodeBudget
from engine.errors import Unprocessable
from engine.manifest import Preprocess
from engine.preprocess import draft_size, preprocess_image

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 7,700 x 5,200 photo; above that, refuse before decoding
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # Pillow's names; JPEG includes MPO (multi-picture JPEG)
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF"

_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # ImageOps.exif_transpose's table
_CHUNK_PIXELS = 1 << 18  # row chunks of the 8-bit conversions: ~6 MB of temporaries whatever the image size
_CHUNK_BYTES_PER_PIXEL = 24  # float64 in and out, a 2-byte copy, uint8 and the pasted chunk; RGBA compositing is 20
_OVERHEAD = 4 << 20  # decoder states (zlib, libjpeg pools), row buffers, Python objects
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_PNG_ORIENTATION_KEYS = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")  # where Pillow finds orientation
_JPEG_NEXT_SCAN_OR_END = re.compile(rb"\xff[\xd9\xda]")  # EOI or SOS: a regex finds it 3x faster than bytes.find
_JPEG_DAMAGED = re.compile(r"premature end|bad (huffman|arithmetic) code|instead of RST", re.IGNORECASE)
_JPEG_COLOURS = {"L": ("GRAY", "L"), "RGB": ("RGB", "RGB"), "CMYK": ("CMYK", "CMYK;I")}  # simplejpeg's, Pillow's
_JPEG_ARRAY_BYTES = {"L": 0, "RGB": 3, "CMYK": 4}  # simplejpeg's array per pixel, while Pillow copies it (L: shared)


class ImageError(Unprocessable):
    """Input that is not a decodable image within the limits."""


def decode_image(
    data: bytes,
    preprocess: Preprocess | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    budget: DecodeBudget | None = None,
    *,
    timeout: float | None = None,
) -> Image.Image:
    """Decode bytes into an upright RGB PIL image, or raise ImageError saying why not.

    With `preprocess`, JPEGs are decoded directly at the smallest power-of-two scale that still leaves
    the shorter side at least `preprocess.resize` pixels (libjpeg DCT scaling: ~10x faster on 12 MP).
    With `budget`, decode_cost is reserved while decoding runs, waiting at most `timeout` seconds (default: the
    budget's) before DecodeBusy; ImageTooCostly if it exceeds the whole budget. The returned image is the caller's.
    """
    with _decoded(data, preprocess, max_pixels, budget, timeout, rgb=True) as image:
        return image


def load_tensor(
    data: bytes,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    budget: DecodeBudget | None = None,
    *,
    timeout: float | None = None,
) -> np.ndarray:
    """Bytes straight to the network input for one image; `budget` and `timeout` as for decode_image, the
    reservation held until the resize is done (the full-size image lives until then)."""
    with _decoded(data, preprocess, max_pixels, budget, timeout, rgb=False) as image:
        return preprocess_image(image, preprocess)


@contextmanager
def _decoded(
    data: bytes,
    preprocess: Preprocess | None,
    max_pixels: int,
    budget: DecodeBudget | None,
    timeout: float | None,
    rgb: bool,
) -> Iterator[Image.Image]:
    """Open, estimate, reserve, then decode to an upright L or RGB image (RGB with `rgb`).

    Each step rebinds `image`, so the previous full-size buffer is freed as soon as the next one exists.
    """
    with _decoding_errors():
        image = _open(data, preprocess, max_pixels)
        cost = decode_cost(image, preprocess, rgb=rgb) if budget is not None else 0
    with budget.reserve(cost, timeout) if budget is not None else nullcontext():
        with _decoding_errors():
            image, orientation = _load(image, data)
            transpose_first = _bytes_per_pixel(image.mode) <= _bytes_per_pixel(_target_mode(image.mode))
            if transpose_first:
                image = _transposed(image, orientation)
            image = _converted(image)
            if not transpose_first:
                image = _transposed(image, orientation)
            if rgb and image.mode != "RGB":
                image = image.convert("RGB")
        yield image


def _open(data: bytes, preprocess: Preprocess | None, max_pixels: int) -> Image.Image:
    """Read the headers only (formats allowlisted), refuse too many pixels, pick the JPEG draft scale."""
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")
    if preprocess is not None and isinstance(image, JpegImageFile):
        image.draft("RGB", draft_size(width, height, preprocess))
    return image


@contextmanager
def _decoding_errors() -> Iterator[None]:
    """Turn whatever Pillow raises on bad input into an ImageError a client can act on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a recognised image format ({FORMAT_NAMES} are)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"image could not be decoded (truncated or corrupt): {exc}") from exc


# --- decoding -----------------------------------------------------------------------------------------------------


def _load(image: Image.Image, data: bytes) -> tuple[Image.Image, int]:
    """The decoded pixels as a plain image (no file, no decoder state left attached) and the EXIF orientation."""
    if isinstance(image, JpegImageFile) and max(image.size) * _jpeg_scale(image) >= 8:
        orientation = image.getexif().get(_ORIENTATION, 1)  # JPEG: known from the headers
        return _decode_jpeg(image, data), orientation
    image.load()
    if image.format == "PNG":
        _check_png_complete(image, data)
    orientation = image.getexif().get(_ORIENTATION, 1)  # PNG: eXIf may follow the pixel data
    # A plain Image sharing the decoded core: drops the file object and decoder state (WebP keeps two canvases
    # and a copy of the frame there, 12 bytes per pixel, for as long as the WebPImageFile lives).
    return image._new(image.im), orientation


def _decode_jpeg(image: JpegImageFile, data: bytes) -> Image.Image:
    """libjpeg-turbo via simplejpeg, strict: same library, scale and pixels as Pillow's decoder (tested), but a
    warning about missing or damaged data is an error here, where Pillow would fill the rest with grey.

    The scale is the one draft() chose: simplejpeg picks the smallest DCT scale whose size is at least the one
    asked for, which is exactly 1/draft-scale unless both sides are below 8 pixels (then Pillow decodes instead).
    """
    width, height = image.size
    colourspace, rawmode = _JPEG_COLOURS[image.mode]
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=colourspace, min_width=width, min_height=height, strict=True)
    except ValueError as exc:
        if _JPEG_DAMAGED.search(str(exc)):
            raise ImageError(f"image could not be decoded (truncated or corrupt): {exc}") from None
        # A warning libjpeg recovers from without losing data (e.g. "Invalid SOS parameters for sequential JPEG",
        # extraneous bytes), or a JPEG flavour TurboJPEG declines: decode as before, with Pillow.
        image.load()
        return image._new(image.im)
    if pixels.shape[:2] != (height, width):  # never seen; would mean another DCT scale than Pillow's
        image.load()
        return image._new(image.im)
    # L shares the array's memory; RGB is copied into Pillow's 4-byte pixels (an RGBX array could be shared, but
    # resampling 4 bands instead of 3 costs more than this copy); CMYK is copied undoing Adobe's inversion, as
    # Pillow does.
    return Image.frombuffer(image.mode, (width, height), pixels, "raw", rawmode, 0, 1)


def _check_png_complete(image: Image.Image, data: bytes) -> None:
    """Pillow stops quietly at the end of the data when the IEND chunk is missing: a file cut after its pixels."""
    position = image.fp.tell() if image.fp is not None and not image.fp.closed else 0
    if data.find(_IEND, max(0, position - len(_IEND))) < 0:
        raise ImageError("image could not be decoded (truncated or corrupt): the PNG ends before its IEND chunk")


def _transposed(image: Image.Image, orientation: int) -> Image.Image:
    """What ImageOps.exif_transpose does to the pixels, without its copy of images that need no rotation."""
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _target_mode(mode: str) -> str:
    """L for grey images (resized before becoming RGB), RGB for colour."""
    return "L" if mode in ("1", "L", "LA", "F", "I") or mode.startswith("I;16") else "RGB"


def _converted(image: Image.Image) -> Image.Image:
    """Any mode -> L or RGB with the same pixels as before issue 12 (transparency flattened onto white,
    16/32-bit grey scaled so its brightest pixel is 255), without full-size temporaries."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        return _flattened(image, _target_mode(mode))
    if mode == "I" or mode.startswith("I;16"):
        return _scaled_to_l(image)
    return image.convert(_target_mode(mode))


def _row_chunks(width: int, height: int) -> Iterator[tuple[int, int]]:
    step = max(1, _CHUNK_PIXELS // max(1, width))
    for top in range(0, height, step):
        yield top, min(height, top + step)


def _flattened(image: Image.Image, mode: str) -> Image.Image:
    """Alpha-composite onto white (what a viewer shows), chunk by chunk: the same Pillow operations as on the
    whole image, without its four full-size RGBA copies. Grey + alpha gives equal bands: kept as L."""
    width, height = image.size
    out = Image.new(mode, image.size)
    for top, bottom in _row_chunks(width, height):
        rgba = image.crop((0, top, width, bottom)).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        out.paste(flat.getchannel(0) if mode == "L" else flat, (0, top))
    return out


def _scaled_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit grey -> L, brightest pixel at 255: the float64 formula as before, applied row chunk by row chunk
    (it was 8 bytes per pixel twice over, the whole image at once: 0.75 GB for a 40 MP 16-bit PNG)."""
    width, height = image.size
    chunks = list(_row_chunks(width, height))
    peak = max(np.asarray(image.crop((0, top, width, bottom))).max() for top, bottom in chunks)
    factor = 255.0 / (float(peak) or 1.0)
    out = Image.new("L", image.size)
    for top, bottom in chunks:
        rows = np.asarray(image.crop((0, top, width, bottom)), dtype=np.float64)
        out.paste(Image.fromarray((rows * factor).astype(np.uint8)), (0, top))
    return out


# --- what decoding costs ------------------------------------------------------------------------------------------


def decode_cost(image: Image.Image, preprocess: Preprocess | None = None, *, rgb: bool = True) -> int:
    """Conservative peak bytes that decoding `image` (opened, not loaded, after JPEG draft) will allocate on top
    of what is already there: as decode_image does (rgb=True, an RGB image out) or load_tensor (rgb=False, then
    resampled to `preprocess.size` while the decoded image is still held).

    Pillow stores 1, L and P in 1 byte per pixel, I;16 in 2 and everything else (RGB included) in 4. The peak
    is the largest of the steps, each holding its input and output: decoding (plus the decoder's own buffers),
    EXIF rotation, conversion to L / RGB, then the final RGB copy or the resize.
    """
    width, height = image.size
    pixels = width * height
    source = image.mode
    target = _target_mode(source)
    size_source, size_target = pixels * _bytes_per_pixel(source), pixels * _bytes_per_pixel(target)
    steps = [_load_bytes(image, pixels, size_source)]
    if _may_rotate(image):
        steps.append(2 * min(size_source, size_target))
    if target != source:
        steps.append(size_source + size_target + _conversion_bytes(image, source))
    if rgb and target != "RGB":
        steps.append(size_target + pixels * 4)
    if not rgb and preprocess is not None:
        crop_h, crop_w = preprocess.size
        # Pillow resamples horizontally first, into crop_w x (rows of the box) at 4 bytes; then the small outputs.
        steps.append(size_target + crop_w * max(width, height) * 4 + crop_w * crop_h * 24)
    return max(steps) + _OVERHEAD


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _conversion_bytes(image: Image.Image, mode: str) -> int:
    """The row-chunk temporaries of _flattened and _scaled_to_l (a whole row when rows are long); Pillow's own
    convert() goes straight from one full-size image to the other."""
    chunked = (
        mode in ("RGBA", "LA", "PA", "I") or mode.startswith("I;16") or (mode == "P" and "transparency" in image.info)
    )
    return max(_CHUNK_PIXELS, image.size[0]) * _CHUNK_BYTES_PER_PIXEL if chunked else 0


def _load_bytes(image: Image.Image, pixels: int, decoded: int) -> int:
    """The decoding step: the `decoded` image and the buffers its decoder holds on the way."""
    if isinstance(image, JpegImageFile):
        # simplejpeg's array, with libjpeg's coefficients while it decodes, then with Pillow's copy of it
        # (libjpeg is done by then); a grey image shares the array.
        array = pixels * _JPEG_ARRAY_BYTES[image.mode]
        return max((array or decoded) + _jpeg_coefficient_bytes(image), array + decoded)
    if image.format == "WEBP":
        return decoded + pixels * 12  # libwebp's two RGBA canvases and Pillow's copy of the frame, until detached
    if image.format == "TIFF":
        return decoded + _tiff_strip_bytes(image) + len(_data(image) or b"")
    if image.format == "BMP" and image.tile and image.tile[0][0] == "bmp_rle":
        return decoded + pixels * 9 // 4  # Pillow's RLE decoder: a growing bytearray, then a bytes copy of it
    if image.format == "GIF" and getattr(image, "dispose", None) is not None:
        return decoded + pixels * _bytes_per_pixel(image.mode)  # frame 0's disposal fill, made by Image.open
    return decoded


def _jpeg_scale(image: JpegImageFile) -> int:
    return image.decoderconfig[0] if image.decoderconfig else 1


def _jpeg_coefficient_bytes(image: JpegImageFile) -> int:
    """Progressive and multi-scan JPEGs: libjpeg keeps every DCT coefficient (2 bytes per sample) of the full-size
    image, whatever the output scale. Baseline single-scan JPEGs are decoded row by row and need none of this."""
    if not _jpeg_has_several_scans(image):
        return 0
    scale = _jpeg_scale(image)
    width, height = image.size[0] * scale, image.size[1] * scale
    h_max = max(h for _, h, _, _ in image.layer)
    v_max = max(v for _, _, v, _ in image.layer)
    total = 0
    for _, h, v, _ in image.layer:
        blocks_wide = math.ceil(math.ceil(width * h / h_max) / 8)
        blocks_high = math.ceil(math.ceil(height * v / v_max) / 8)
        total += (math.ceil(blocks_wide / h) * h) * (math.ceil(blocks_high / v) * v) * 64 * 2
    return total


def _jpeg_has_several_scans(image: JpegImageFile) -> bool:
    """Progressive, or a second start-of-scan marker before the end-of-image one (FF DA and FF D9 cannot occur
    inside entropy-coded data). Pillow leaves the file just after the first scan's header."""
    if image.info.get("progressive") or image.info.get("progression"):
        return True
    data = _data(image)
    if data is None:
        return True
    start = image.fp.tell()
    if start == 0:  # MPO rewinds to its first picture: no position to search from
        return True
    marker = _JPEG_NEXT_SCAN_OR_END.search(data, start)
    return marker is None or marker.group() == b"\xff\xda"


def _tiff_strip_bytes(image: Image.Image) -> int:
    """libtiff's buffer for one strip or tile, decoded at the file's own bit depth (one plane when planar);
    YCbCr TIFFs are read as RGBA rows."""
    tags = image.tag_v2
    width, height = image.size
    try:
        bits = tags.get(258, (1,))
        bits = max(bits) if isinstance(bits, tuple) else int(bits)
        samples = 1 if tags.get(284, 1) == 2 else int(tags.get(277, 1))
        if 322 in tags and 323 in tags:
            row_pixels, rows = int(tags[322]), int(tags[323])
        else:
            row_pixels, rows = width, min(int(tags.get(278, height)), height)
    except (TypeError, ValueError):  # odd tag types: assume one strip of 16-bit RGBA
        bits, samples, row_pixels, rows = 16, 4, width, height
    strip = rows * math.ceil(row_pixels * samples * bits / 8)
    return max(strip, rows * row_pixels * 4) if tags.get(262) == 6 else strip


def _may_rotate(image: Image.Image) -> bool:
    """Whether EXIF (or XMP) orientation may ask for a rotation. PNG can carry it after the pixel data, so there
    the raw bytes are searched for the chunks Pillow takes it from."""
    if image.format == "PNG":
        data = _data(image)
        return data is None or any(key in data for key in _PNG_ORIENTATION_KEYS)
    return image.getexif().get(_ORIENTATION, 1) in _TRANSPOSE


def _data(image: Image.Image) -> bytes | None:
    """The file's bytes when the image was opened from memory (BytesIO.getvalue shares them: no copy)."""
    return image.fp.getvalue() if isinstance(image.fp, io.BytesIO) and not image.fp.closed else None
