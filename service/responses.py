"""The form of a features answer, chosen by the Accept header: JSON (the default), or a standard tensor container
that costs the arrays' raw bytes and is one library call to read: safetensors (`safetensors.numpy.load`) or NumPy's
npz (`numpy.load`, no pickle).

A binary answer holds one tensor per (layer, pooling), batched over the inputs: "{layer}/{pooling}" [N, …], plus
"top/index" and "top/probability" when top classes are asked. Everything else the JSON answer says (model,
sha256, options, names, top labels, timings) travels beside them as the JSON string `response`: safetensors'
`__metadata__["response"]`, or the npz member `__response__` (a 0-d unicode array).
"""

from __future__ import annotations

import io

import numpy as np
import orjson
from flask import Request, Response
from safetensors.numpy import save as safetensors_bytes

from engine.answers import Features
from service.problems import NotAcceptable

JSON = "application/json"
SAFETENSORS = "application/x-safetensors"
NPZ = "application/x-npz"
FORMS = (JSON, SAFETENSORS, NPZ)  # JSON first: Accept */* (or none) means JSON
METADATA_KEY = "response"  # safetensors __metadata__ key
NPZ_METADATA = "__response__"


def negotiate(request: Request) -> str:
    """The answer's media type; NotAcceptable (406) when the Accept header allows none of them."""
    if not request.accept_mimetypes:
        return JSON
    chosen = request.accept_mimetypes.best_match(FORMS)
    if chosen is None:
        raise NotAcceptable(
            f"Accept {request.headers.get('Accept')!r} allows none of {', '.join(FORMS)}", valid=list(FORMS)
        )
    return chosen


def tensors(features: Features) -> dict[str, np.ndarray]:
    """The binary answer's arrays by name, in the answer's order."""
    arrays = {tensor.key: tensor.array for tensor in features.tensors}
    if features.top is not None:
        arrays["top/index"] = features.top.index
        arrays["top/probability"] = features.top.probability
    return arrays


def tensor_index(features: Features) -> dict[str, dict]:
    """What each tensor of a binary answer is: its layer, level and pooling (top classes: none of these)."""
    return {
        tensor.key: {"layer": tensor.layer.name, "level": tensor.layer.level, "pooling": tensor.pooling}
        for tensor in features.tensors
    }


def binary_response(media_type: str, features: Features, metadata: dict) -> Response:
    """A safetensors or npz body: the arrays, and the rest of the answer as one JSON string beside them."""
    described = orjson.dumps({**metadata, "tensors": tensor_index(features)}).decode()
    arrays = tensors(features)
    if media_type == SAFETENSORS:
        body = safetensors_bytes(arrays, metadata={METADATA_KEY: described})
    else:
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays, **{NPZ_METADATA: np.array(described)})
        body = buffer.getvalue()
    return Response(body, mimetype=media_type)
