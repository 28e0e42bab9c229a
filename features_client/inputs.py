"""What the caller hands over (paths, bytes, file objects, URLs, float arrays) as the service's inputs, and the
body of one request: multipart when every input is an encoded image (no base64 overhead), JSON otherwise.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

import numpy as np

URL_PREFIXES = ("https://", "http://", "data:")  # sent for the server to fetch or decode, never read here


@dataclass(frozen=True)
class Entry:
    """One input: kind "image" (encoded bytes), "url" or "tensor" (a float array [C, H, W])."""

    kind: str
    value: bytes | str | np.ndarray
    name: str | None


def entries(images, names) -> list[Entry]:
    """The inputs in order; a single path, bytes, URL or [C, H, W] array stands for a list of one, and an
    [N, C, H, W] array for N tensors. Files are read here: OSError as the file system says."""
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)) or hasattr(images, "read"):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if images.ndim == 4 else [images]
    items = list(images)
    if names is not None:
        names = list(names)
        if len(names) != len(items):
            raise ValueError(f"{len(names)} names for {len(items)} images; give one name per image, or none")
    return [_entry(item, names[i] if names is not None else None, i) for i, item in enumerate(items)]


def _entry(item, name: str | None, index: int) -> Entry:
    if isinstance(item, str) and item.startswith(URL_PREFIXES):
        return Entry("url", item, name)
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as handle:
            return Entry("image", handle.read(), name if name is not None else os.path.basename(os.fspath(item)))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Entry("image", bytes(item), name)
    if hasattr(item, "read"):
        data = item.read()
        if not isinstance(data, bytes):
            raise TypeError(f"images[{index}] is a file opened in text mode; open it with 'rb'")
        fallback = os.path.basename(item.name) if isinstance(getattr(item, "name", None), str) else None
        return Entry("image", data, name if name is not None else fallback)
    if isinstance(item, np.ndarray):
        if item.dtype.kind != "f" or item.ndim != 3:
            raise TypeError(
                f"images[{index}] is a {item.dtype} array of shape {item.shape}; arrays are sent as preprocessed "
                "float tensors [C, H, W] (the model's preprocessing applied): send encoded image files for pixels"
            )
        return Entry("tensor", item, name)
    raise TypeError(
        f"images[{index}] is a {type(item).__name__}; give a path, bytes, a binary file, an https:// or data: URL, "
        "or a float array [C, H, W]"
    )


def request_body(batch: list[Entry], options: dict[str, object]) -> dict:
    """requests' keyword arguments for one request of `batch` with `options` (None values left out)."""
    options = {key: value for key, value in options.items() if value is not None}
    if all(entry.kind == "image" for entry in batch):
        files = [("image", (entry.name or "", entry.value, "application/octet-stream")) for entry in batch]
        return {"files": files, "data": {key: _form_value(value) for key, value in options.items()}}
    return {"json": {"inputs": [_json_input(entry) for entry in batch], **options}}


def _form_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _json_input(entry: Entry) -> dict:
    if entry.kind == "url":
        item: dict = {"url": entry.value}
    elif entry.kind == "image":
        item = {"image": base64.b64encode(entry.value).decode("ascii")}
    else:
        dtype = "<f2" if entry.value.dtype == np.float16 else "<f4"
        array = np.ascontiguousarray(entry.value, dtype=dtype)
        data = base64.b64encode(array.tobytes()).decode("ascii")
        item = {"tensor": {"shape": list(array.shape), "dtype": "float16" if dtype == "<f2" else "float32",
                           "data": data}}  # fmt: skip
    if entry.name is not None:
        item["name"] = entry.name
    return item
