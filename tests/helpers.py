"""Helpers both test tiers use, defined once: the repo root, photos and encoded images, polling, free ports.

Servers come from bench/servers.py (tests/integration/conftest.py wraps it); nothing here starts a process.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image

from bench.servers import free_port
from engine.images import load_tensor

__all__ = [
    "REPO", "assert_first_filter_drawn", "assert_pooled_layers_equal", "direct_run", "encode", "exif", "free_port",
    "photo", "photo_jpeg", "run_python_examples", "top5", "wait_until",
]  # fmt: skip

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


def direct_run(session, manifest, image_bytes: list[bytes], outputs: list[str]) -> list[np.ndarray]:
    """What ONNX Runtime gives for the same images without the service in between."""
    batch = np.stack([load_tensor(data, manifest.preprocess) for data in image_bytes])
    return session.run(outputs, {manifest.onnx.input: batch})


def assert_pooled_layers_equal(
    results: list[dict], session, manifest, image_bytes: list[bytes], tolerance: float = 1e-6
) -> None:
    """Each result holds every layer of the manifest, grouped by level, as the avg-pooled vector a direct run gives.

    `tolerance` (relative and absolute): 1e-6 for fp32; an int8 or fp16 graph's batch composition may round apart.
    """
    layers = manifest.layers
    expected = direct_run(
        session, manifest, image_bytes, [layer.outputs.get("avg", layer.outputs["none"]) for layer in layers]
    )
    for index, result in enumerate(results):
        assert set(result["features"]) == {"low", "mid", "high"}
        for layer, reference in zip(layers, expected, strict=True):
            got = result["features"][layer.level][layer.name]
            assert got["shape"] == [layer.shape[0]] and got["dtype"] == "float32"
            np.testing.assert_allclose(got["values"], reference[index], rtol=tolerance, atol=tolerance)


def assert_first_filter_drawn(image: Image.Image, onnx_path: Path) -> None:
    """filters.png's first cell shows filter 0 of the graph's first convolution, which reads the input, scaled so
    its largest weight spans the colour range (its top-left pixel checked)."""
    graph = onnx.load(str(onnx_path)).graph
    conv = next(node for node in graph.node if node.op_type == "Conv")
    assert conv.input[0] == "input"
    weights = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == conv.input[1])
    expected = 0.5 + 0.5 * weights[0, :, 0, 0] / np.abs(weights[0]).max()  # filter 0, its top-left weight
    assert np.abs(np.asarray(image)[10, 10] - expected * 255).max() <= 1


def run_python_examples(doc: str, server_url: str) -> str:
    """The ```python blocks of docs/`doc`, run in order as written (against `server_url` instead of
    localhost:8000) in the current folder; what they print. A doc's example that fails fails the test."""
    text = (REPO / "docs" / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, f"docs/{doc} has no ```python example"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            code = block.replace("http://localhost:8000", server_url).replace(
                "localhost:8000", server_url.split("//")[-1]
            )
            exec(compile(code, f"docs/{doc}", "exec"), {})
    return printed.getvalue()
