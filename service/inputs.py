"""The HTTP form of a feature request: multipart, JSON (base64 images, image URLs or tensors), a raw image body or
`url=` in the query -> the core's inputs and the raw options, counted and checked before anything is decoded
or fetched (service/remote_images.py fetches URLs; data: URIs are decoded here).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

import numpy as np
import orjson
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from engine.errors import FeaturesError, InvalidInput, TooLarge
from engine.inputs import Input
from engine.settings import Settings
from service import remote_images
from service.problems import UnsupportedMediaType

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
MAX_TENSOR_RANK = 8  # a model input is [C, H, W]; anything far longer is refused before any arithmetic
TENSOR_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
URL_FIELD = "url"  # multipart text field and query parameter naming an image URL (repeatable); never an option


@dataclass(frozen=True)
class _Url:
    """An input given as a URL, fetched (or, a data: URI, decoded) once the request's inputs are counted."""

    url: str
    name: str | None


def parse_request(request: Request, settings: Settings) -> tuple[list[Input], dict[str, object]]:
    """The request's inputs, in order: the body's (multipart files, then its `url` fields), then the query's `url`s,
    counted against `settings.max_images`; `settings` also say whether and where URLs are fetched."""
    max_images = settings.max_images
    mimetype = request.mimetype
    query_urls = request.args.getlist(URL_FIELD)
    if mimetype == "multipart/form-data":
        inputs, options = _multipart(request, max_images)
    elif mimetype == "application/json":
        inputs, options = _json(request, max_images)
    elif mimetype in RAW_IMAGE_TYPES:
        inputs, options = [Input(image=request.get_data(cache=False))], {}
    elif query_urls and not request.get_data(cache=False):
        inputs, options = [], {}  # the inputs are all in the query: no body, so any Content-Type or none
    else:
        raise UnsupportedMediaType(
            f"Content-Type {mimetype or '(none)'} is not accepted; send multipart/form-data (field 'image'), "
            f"application/json, or a raw {', '.join(RAW_IMAGE_TYPES)} body"
        )
    options = _with_query_options(request, options)
    inputs += [_Url(url, None) for url in query_urls]
    if not inputs:
        raise InvalidInput("the request holds no inputs; send at least one image, image URL or tensor")
    _check_count(len(inputs), max_images)
    return _resolved(inputs, settings), options


def _resolved(inputs: list[Input | _Url], settings: Settings) -> list[Input]:
    """Every _Url as the Input of its image: data: URIs decoded, http(s) URLs fetched (all at once)."""
    urls = {}
    for index, item in enumerate(inputs):
        if isinstance(item, _Url):
            if remote_images.is_data_uri(item.url):
                inputs[index] = Input(image=_data_uri(item.url, index), name=item.name)
            else:
                urls[index] = item.url
    if urls:
        fetched = remote_images.fetch_all(urls, remote_images.UrlPolicy.from_settings(settings))
        for index, data in fetched.items():
            name = inputs[index].name or remote_images.default_name(urls[index])
            inputs[index] = Input(image=data, name=name)
    return inputs


def _data_uri(uri: str, index: int) -> bytes:
    try:
        return remote_images.decode_data_uri(uri)
    except FeaturesError as exc:
        raise exc.about(f"inputs[{index}] ({remote_images.display(uri)})", index=index) from None


def _check_count(count: int, max_images: int) -> None:
    """Counted before anything is decoded, whatever the body's form."""
    if count > max_images:
        raise TooLarge(f"{count} inputs in one request; the limit is {max_images}", limit=max_images)


def _with_query_options(request: Request, body_options: dict[str, object]) -> dict[str, object]:
    """Options may come in the query string with any body; one given in both places is refused, not guessed."""
    query = {key: ",".join(request.args.getlist(key)) for key in request.args if key != URL_FIELD}
    both = sorted(set(query) & set(body_options))
    if both:
        raise InvalidInput(f"option {both[0]!r} is given both in the query string and in the body; give it once")
    return {**query, **body_options}


def _multipart(request: Request, max_images: int) -> tuple[list[Input | _Url], dict[str, object]]:
    try:
        files, form = request.files, request.form
    except RequestEntityTooLarge:
        limit = request.max_content_length
        if limit is not None and request.content_length is not None and request.content_length > limit:
            raise  # the body limit: the app's handler names it, as for every other body
        raise _form_too_large(request) from None
    unexpected = sorted(set(files) - {"image"})
    if unexpected:
        raise InvalidInput(f"unexpected file field {unexpected[0]!r}; send images in the field 'image'")
    if "image" in form:  # a part without a filename is a text field to werkzeug, not a file
        raise InvalidInput(
            "the multipart part 'image' has no filename; send each image as a file part "
            '(Content-Disposition: form-data; name="image"; filename="cat.jpg")'
        )
    uploads, urls = files.getlist("image"), form.getlist(URL_FIELD)
    _check_count(len(uploads) + len(urls), max_images)
    inputs: list[Input | _Url] = [Input(image=f.read(), name=f.filename or None) for f in uploads]
    inputs += [_Url(url, None) for url in urls]
    options: dict[str, object] = {}
    for key in form:
        if key == URL_FIELD:
            continue
        values = form.getlist(key)
        options[key] = values[0] if len(values) == 1 else ",".join(values)
    return inputs, options


def _form_too_large(request: Request) -> TooLarge:
    """Werkzeug raises one 413 for the body, part-count and field-size limits; this names the form's two."""
    parts, field = request.max_form_parts, request.max_form_memory_size
    return TooLarge(
        f"the form has more than {parts} parts or a text field above {field} bytes; send images in 'image' "
        "fields and options as short text fields",
        limit=parts,
    )


def _json(request: Request, max_images: int) -> tuple[list[Input | _Url], dict[str, object]]:
    try:
        body = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InvalidInput('the JSON body must be an object with a list "inputs": [{"image": "<base64>"}, …]')
    options = {key: value for key, value in body.items() if key != "inputs"}
    _check_count(len(body["inputs"]), max_images)
    return [_json_input(item, index) for index, item in enumerate(body["inputs"])], options


def _json_input(item, index: int) -> Input | _Url:
    if not isinstance(item, dict) or len({"image", "url", "tensor"} & set(item)) != 1:
        raise InvalidInput(
            f'inputs[{index}] must be {{"image": "<base64>"}}, {{"url": "https://…"}} or {{"tensor": {{…}}}}',
            index=index,
        )
    name = item.get("name") if isinstance(item.get("name"), str) else None
    if "image" in item:
        return Input(image=_b64(item["image"], f"inputs[{index}].image", index), name=name)
    if "url" in item:
        if not isinstance(item["url"], str):
            raise InvalidInput(f"inputs[{index}].url must be a string: an http(s) URL or a data: URI", index=index)
        return _Url(item["url"], name)
    return Input(tensor=_tensor(item["tensor"], index), name=name)


def _b64(value, where: str, index: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a base64 string", index=index)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not valid base64", index=index) from None


def _tensor(spec, index: int) -> np.ndarray:
    where = f"inputs[{index}].tensor"
    if not isinstance(spec, dict) or not {"shape", "data"} <= set(spec):
        raise InvalidInput(
            f'{where} must be {{"shape": [C, H, W], "dtype": "float32", "data": "<base64>"}}', index=index
        )
    name = spec.get("dtype", "float32")
    dtype = TENSOR_DTYPES.get(name) if isinstance(name, str) else None  # found by schemathesis: {} is unhashable
    if dtype is None:
        raise InvalidInput(f"{where}.dtype {spec.get('dtype')!r} is not one of {', '.join(TENSOR_DTYPES)}", index=index)
    shape = spec["shape"]
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_TENSOR_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise InvalidInput(
            f"{where}.shape must be a list of 1 to {MAX_TENSOR_RANK} positive integers, e.g. [3, 224, 224]", index=index
        )
    data = _b64(spec["data"], f"{where}.data", index)
    expected = math.prod(shape) * dtype.itemsize  # Python integers: a huge shape cannot overflow
    if len(data) != expected:
        raise InvalidInput(
            f"{where}.data holds {len(data)} bytes; shape {shape} of {dtype.name} needs {expected}", index=index
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        raise InvalidInput(f"{where} contains NaN or infinite values", index=index)
    return array
