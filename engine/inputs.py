"""Inputs as a caller sent them (encoded images or preprocessed tensors) -> one NCHW float32 batch.

The first bad input fails the batch with an error naming its index, of the same kind as the decoder's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.decode_budget import DecodeBudget
from engine.errors import FeaturesError, InvalidInput
from engine.images import load_tensor
from engine.manifest import Manifest


@dataclass(frozen=True)
class Input:
    """One image (encoded bytes) or one preprocessed tensor, as the client sent it."""

    image: bytes | None = None
    tensor: np.ndarray | None = None
    name: str | None = None


def to_batch(
    inputs: list[Input], manifest: Manifest, max_pixels: int, budget: DecodeBudget | None = None
) -> np.ndarray:
    """Decode and preprocess every input into one float32 batch; the first bad one fails with its index.

    With a budget, each image reserves what decoding it costs: one that could never fit is TooLarge, one that
    cannot get its bytes within the budget's wait Unavailable (the server is busy, the image is fine)."""
    expected = list(manifest.onnx.input_shape)
    tensors = []
    for index, item in enumerate(inputs):
        if item.tensor is not None:
            shape = list(item.tensor.shape)
            if shape != expected:
                detail = f"inputs[{index}].tensor has shape {shape}; model {manifest.name} takes {expected}"
                raise InvalidInput(detail, index=index)
            tensors.append(item.tensor)
            continue
        try:
            tensors.append(load_tensor(item.image, manifest.preprocess, max_pixels, budget))
        except FeaturesError as exc:
            raise exc.about(f"image {index}" + (f" ({item.name})" if item.name else ""), index=index) from None
    return np.stack(tensors)
