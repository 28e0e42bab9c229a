"""What a feature request answers, before the edge encodes it: one tensor per (layer, pooling) for the whole
batch, the top classes, and their JSON form per input. The HTTP edge also writes them as safetensors or npz
(service/responses.py); keeping the batch whole until then is what makes a binary answer cost its raw bytes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import Unprocessable
from engine.manifest import Layer

if TYPE_CHECKING:
    from engine.features import FeatureOptions


def l2_normalise(array: np.ndarray, axis: int = 0) -> np.ndarray:
    """Unit L2 norm along channels (`axis`): per vector, or per spatial position of a [C, H, W] map."""
    norm = np.linalg.norm(array, axis=axis, keepdims=True)
    return array / np.maximum(norm, 1e-12)


def encode_array(array: np.ndarray, options: FeatureOptions) -> dict:
    """One layer of one input: shape, dtype and values (JSON numbers) or data (base64 little-endian)."""
    array = np.ascontiguousarray(array, dtype=options.dtype)
    encoded = {"shape": list(array.shape), "dtype": options.dtype}
    if options.encoding == "base64":
        little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
        encoded["data"] = base64.b64encode(little_endian.tobytes()).decode("ascii")
    else:
        encoded["values"] = array  # orjson writes contiguous numpy arrays natively
    return encoded


@dataclass(frozen=True)
class Tensor:
    """One layer at one pooling for a whole batch, as answered: normalised if asked, in the asked dtype."""

    layer: Layer
    pooling: str
    array: np.ndarray  # [N, *layer.shape or pooled shape]

    @property
    def key(self) -> str:
        """Its name in binary answers (safetensors, npz): "{layer}/{pooling}"."""
        return f"{self.layer.name}/{self.pooling}"


@dataclass(frozen=True)
class TopClasses:
    """The k most probable classes per input: softmax of the classifier layer's outputs."""

    index: np.ndarray  # [N, k] int64, most probable first
    probability: np.ndarray  # [N, k] float32
    labels: list[str]

    def of(self, row: int) -> list[dict]:
        return [
            {"index": int(i), "label": self.labels[i], "probability": float(p)}
            for i, p in zip(self.index[row], self.probability[row], strict=True)
        ]


@dataclass(frozen=True)
class Features:
    """A request's answer before it is encoded: JSON per input, or one tensor per (layer, pooling)."""

    tensors: list[Tensor]  # poolings in the asked order, layers in depth order within each
    top: TopClasses | None
    count: int  # inputs

    def per_input(self, options: FeatureOptions, arrays: bool = True) -> list[dict]:
        """Per input: {"features": {level: {layer: encoded}}} for one pooling, {"features_by_pooling":
        {pooling: …}} for several, and "top" when asked; without the arrays for a binary answer (tensors())."""
        results = []
        for row in range(self.count):
            result: dict = {}
            if arrays:
                by_pooling: dict[str, dict[str, dict]] = {}
                for tensor in self.tensors:
                    levels = by_pooling.setdefault(tensor.pooling, {})
                    levels.setdefault(tensor.layer.level, {})[tensor.layer.name] = encode_array(
                        tensor.array[row], options
                    )
                if len(options.poolings) == 1:
                    result["features"] = by_pooling[options.pooling]
                else:
                    result["features_by_pooling"] = by_pooling
            if self.top is not None:
                result["top"] = self.top.of(row)
            results.append(result)
        return results


def top_classes(logits: np.ndarray, k: int, labels: list[str]) -> TopClasses:
    """Softmax in float64 (no overflow for large logits), then the k largest, ties in label order."""
    shifted = logits.reshape(len(logits), -1).astype(np.float64)
    shifted -= shifted.max(axis=1, keepdims=True)
    probability = np.exp(shifted)
    probability /= probability.sum(axis=1, keepdims=True)
    index = np.argsort(-probability, axis=1, kind="stable")[:, :k]
    return TopClasses(index.astype(np.int64), np.take_along_axis(probability, index, axis=1).astype(np.float32), labels)


def prepare(array: np.ndarray, options: FeatureOptions, what: str) -> np.ndarray:
    """A batch of one layer as answered: unit L2 norm along channels if asked, then the asked dtype. A value past
    float16's range (65504) is refused (422) rather than answered as infinity (JSON null)."""
    if options.normalize:
        array = l2_normalise(array, axis=1)
    with np.errstate(over="ignore"):  # an overflow is found below and refused with its input named
        answered = np.ascontiguousarray(array, dtype=options.dtype)
    index = first_non_finite_row(answered) if answered.dtype != array.dtype else None
    if index is not None:
        raise Unprocessable(
            f"input {index}: {what} holds values beyond the range of {options.dtype}; ask dtype=float32 "
            "or normalize=true",
            index=index,
        )
    return answered


def first_non_finite_row(array: np.ndarray) -> int | None:
    """The first input (row of a batch) holding infinity or NaN, or None when every value is finite."""
    finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return None if finite.all() else int(np.argmin(finite))
