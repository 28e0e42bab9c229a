"""Export-time verification: ONNX Runtime against a reference (PyTorch, or the original ONNX) on real photos.

Tolerance per output: max |onnx - reference| <= 1e-4 * max(1, max |reference|), i.e. 1e-4 absolute for
activations of order one and 1e-4 relative for larger ones (logits, deep maps). An export that misses it
fails and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from engine.manifest import Preprocess, Verification
from engine.preprocess import preprocess_image
from exporter.errors import ExportError
from exporter.onnx_expose import output_name

RELATIVE_TOLERANCE = 1e-4
TOLERANCE_TEXT = "max|onnx - reference| <= 1e-4 * max(1, max|reference|) per output"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # scikit-image's bundled photos (public domain/CC0)


def photo(name: str):
    """One of scikit-image's bundled photos as an RGB PIL image (of a stereo pair, the left one)."""
    from PIL import Image
    from skimage import data

    pixels = getattr(data, name)()
    return Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).convert("RGB")


def photo_batch(preprocess: Preprocess, names=PHOTOS) -> np.ndarray:
    return np.stack([preprocess_image(photo(name), preprocess) for name in names])


def session(model: onnx.ModelProto | Path, provider: str = "CPUExecutionProvider") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=[provider])


def with_pooled(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reference pooled vectors computed in float64 from the reference maps."""
    out = dict(raw)
    for layer, value in raw.items():
        if value.ndim == 4:
            out[output_name(layer, "avg")] = value.astype(np.float64).mean(axis=(2, 3))
            out[output_name(layer, "max")] = value.max(axis=(2, 3))
    return out


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], what: str) -> Verification:
    per_output = {}
    failures = []
    for name, expected in reference.items():
        got = candidate[name]
        if got.shape != expected.shape:
            raise ExportError(f"verification: output {name} has shape {got.shape}, reference {expected.shape}")
        error = float(np.max(np.abs(got.astype(np.float64) - expected)))
        per_output[name] = error
        if not error <= RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected)))):
            failures.append(f"{name} ({error:.3g})")
    verification = Verification(
        passed=not failures,
        reference=what,
        images=[f"skimage.data.{name}" for name in PHOTOS],
        tolerance=TOLERANCE_TEXT,
        max_abs_error=max(per_output.values()),
        per_output=per_output,
    )
    if failures:
        raise ExportError(f"verification against {what} failed ({TOLERANCE_TEXT}): {', '.join(failures)}")
    return verification
