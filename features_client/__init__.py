"""A Python client of the feature service: images in, NumPy arrays per layer out (docs/client.md).

Needs requests and NumPy (safetensors for the fastest answers: pip install 'cnn-features[client]'), nothing of
the server: no Flask, no ONNX Runtime.
"""

from features_client.client import FeaturesClient
from features_client.errors import (
    BadRequest,
    Conflict,
    FeaturesClientError,
    FeaturesConnectionError,
    FeaturesHTTPError,
    FeaturesResponseError,
    Forbidden,
    NotAcceptable,
    NotFound,
    RateLimited,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from features_client.results import FeaturesResult, Neighbour, SearchResult, TopClass

__all__ = [
    "BadRequest", "Conflict", "FeaturesClient", "FeaturesClientError", "FeaturesConnectionError",
    "FeaturesHTTPError", "FeaturesResponseError", "FeaturesResult", "Forbidden", "Neighbour", "NotAcceptable",
    "NotFound", "RateLimited", "SearchResult", "ServerError", "TooLarge", "TopClass", "Unauthorized",
    "Unavailable", "Unprocessable", "UnsupportedMediaType",
]  # fmt: skip
