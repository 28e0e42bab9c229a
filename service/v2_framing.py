"""The Open Inference Protocol's (KServe V2) infer body, both ways, with its binary tensor data extension.

A request body is a JSON header, then (when `Inference-Header-Content-Length` says where the JSON ends) the raw
bytes of each input that carries `parameters.binary_data_size`, in input order. An answer is the same: a JSON
header, then the bytes of each output asked for with `parameters.binary_data`. Binary tensors are little-endian,
row major; a BYTES element is a 4-byte little-endian length and its bytes.

This module only frames and checks (sizes, shapes, datatypes against the bytes); what the tensors mean is the
route's business. Every refusal is InvalidInput naming the input, so the edge answers 400 `{"error": …}`.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson

from engine.errors import InvalidInput, TooLarge

PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
CONTENT_ENCODINGS = {"gzip": 31, "deflate": 15}  # zlib's wbits: tritonclient's request_compression_algorithm
FIXED_DATATYPES = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip
DATATYPE_OF = {dtype: name for name, dtype in FIXED_DATATYPES.items()}
MAX_RANK = 8


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before its Content-Encoding, never more than `limit` bytes (a small bomb stays small).

    Raises LookupError for an encoding not offered (the route answers 415)."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in CONTENT_ENCODINGS:
        raise LookupError(name)
    inflater = zlib.decompressobj(CONTENT_ENCODINGS[name])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {name} data: {exc}") from None
    if len(data) > limit:
        raise TooLarge(f"the {name} body inflates past the body limit of {limit} bytes", limit=limit)
    if not inflater.eof or inflater.unused_data:
        raise InvalidInput(f"the {name} body is cut short or has bytes after its end")
    return data


def speaks_v2(path: str) -> bool:
    """Whether errors on `path` take the protocol's form, `{"error": "…"}`, instead of problem+json."""
    return path == PREFIX or path.startswith(PREFIX + "/")


@dataclass
class InputTensor:
    """One request input: a fixed-size tensor as a NumPy array, or BYTES as a list of byte strings."""

    name: str
    shape: list[int]
    datatype: str
    array: np.ndarray | None = None  # fixed-size datatypes
    elements: list[bytes] = field(default_factory=list)  # BYTES
    in_json: bool = False  # BYTES given as JSON strings (UTF-8 text), not as raw bytes after the header


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[tuple[str, bool]] | None  # (name, binary_data); None: the server's default outputs
    binary_outputs: bool  # parameters.binary_data_output: every output as binary unless it says otherwise


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request, every input's data read and checked against its shape and datatype."""
    json_end = _header_end(body, header_length)
    try:
        header = orjson.loads(body[:json_end])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise InvalidInput('the inference request must be a JSON object with a non-empty list "inputs"')
    binary = memoryview(body)[json_end:]
    offset = 0
    inputs = []
    for index, spec in enumerate(header["inputs"]):
        tensor, used = _input(spec, index, binary[offset:])
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"the body holds {len(binary)} bytes after the inference header, but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    if "id" in header and not isinstance(header["id"], str):
        raise InvalidInput('"id" must be a string')
    return InferRequest(
        id=header.get("id"),
        inputs=inputs,
        outputs=_outputs(header.get("outputs")),
        binary_outputs=parameters.get("binary_data_output") is True,
    )


def _header_end(body: bytes, header_length: str | None) -> int:
    if header_length is None:
        return len(body)
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidInput(f"{HEADER_LENGTH} {header_length!r} is not a whole number of bytes")
    end = int(text)
    if end > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} is {end}, past the end of the {len(body)}-byte body")
    return end


def _input(spec, index: int, binary: memoryview) -> tuple[InputTensor, int]:
    """One input and the number of binary bytes it took."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidInput(f"inputs[{index}] must be an object with a string name")
    name = spec["name"]
    shape, datatype = spec.get("shape"), spec.get("datatype")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(f"input {name}: shape must be a list of at most {MAX_RANK} non-negative integers")
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in FIXED_DATATYPES):
        raise InvalidInput(f"input {name}: unknown datatype {datatype!r}")
    count = math.prod(shape)
    parameters = spec.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    tensor = InputTensor(name, shape, datatype)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {name}: binary_data_size must be a non-negative integer")
        if size > len(binary):
            raise InvalidInput(f"input {name}: binary_data_size {size} is past the end of the body")
        raw = binary[:size]  # a view: each image is copied out once, a tensor not at all
        if datatype == "BYTES":
            tensor.elements = _bytes_elements(raw, count, name)
        else:
            tensor.array = _fixed(raw, shape, datatype, name)
        return tensor, size
    if "data" not in spec:
        raise InvalidInput(f"input {name}: give its data, or binary_data_size and its bytes after the header")
    data = _flatten(spec["data"], name)
    if len(data) != count:
        raise InvalidInput(f"input {name}: shape {shape} needs {count} elements, data holds {len(data)}")
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in data):
            raise InvalidInput(f"input {name}: BYTES data in JSON must be strings")
        tensor.elements = [item.encode() for item in data]
        tensor.in_json = True
    else:
        try:
            tensor.array = np.asarray(data, dtype=FIXED_DATATYPES[datatype]).reshape(shape)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(f"input {name}: data does not fit datatype {datatype}") from None
    return tensor, 0


def _flatten(data, name: str) -> list:
    """JSON tensor data may be flat or nested row major; either way, a flat list."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name}: data must be a list")
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _fixed(raw: memoryview, shape: list[int], datatype: str, name: str) -> np.ndarray:
    dtype = FIXED_DATATYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"input {name}: shape {shape} of {datatype} needs {expected} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _bytes_elements(raw: memoryview, count: int, name: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name}: BYTES element {len(elements)} is cut inside its 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input {name}: BYTES element {len(elements)} says {length} bytes, past its data")
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidInput(f"input {name}: its shape holds {count} elements, its binary data {len(elements)}")
    return elements


def _outputs(specs) -> list[tuple[str, bool]] | None:
    if specs is None:
        return None
    if not isinstance(specs, list):
        raise InvalidInput('"outputs" must be a list of {"name": …}')
    outputs = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string name")
        parameters = spec.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"outputs[{index}].parameters must be an object")
        if "classification" in parameters:  # answering raw tensors instead would silently ignore the ask
            raise InvalidInput(f"outputs[{index}]: the classification extension is not offered; ask "
                               "/v1/models/{model}/features with top=k for the top classes")  # fmt: skip
        outputs.append((spec["name"], parameters.get("binary_data") is True))
    return outputs


def encode_infer_response(header: dict, outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """The answer body and, when some output travels as binary, the length of its JSON header.

    `outputs`: (name, array, binary) in answer order; a binary one gets `binary_data_size` and its bytes follow
    the header in that order, a JSON one its `data` (flat, row major)."""
    described, chunks = [], []
    for name, array, binary in outputs:
        datatype = DATATYPE_OF[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1)
        described.append(entry)
    body = orjson.dumps({**header, "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return body, None
    return body + b"".join(chunks), len(body)
