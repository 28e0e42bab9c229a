"""The building blocks every part of the document uses: schema constants, `$ref`s, the shapes of answers, and
the error answers that most operations share."""

from __future__ import annotations

_REF = "#/components/schemas/"
STRING = {"type": "string"}
STRINGS = {"type": "array", "items": STRING}
INTEGERS = {"type": "array", "items": {"type": "integer"}}
BINARY = {"type": "string", "format": "binary"}


def ref(name: str) -> dict:
    return {"$ref": _REF + name}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def problem(description: str) -> dict:
    return {"description": description, "content": {"application/problem+json": {"schema": ref("Problem")}}}


def ok(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def binary(media_type: str, description: str) -> dict:
    return {"description": description, "content": {media_type: {"schema": BINARY}}}


ERRORS = {
    "400": problem(
        "bad option, malformed JSON, bad tensor, or an image URL refused (its scheme, address or credentials, or "
        "fetching off)"
    ),
    "401": problem("API key required"),
    "404": problem("unknown model or layer (the problem lists valid names)"),
    "413": problem(
        "body, number of inputs, form parts, a fetched image or an image's decoding memory above its limit "
        "(`limit` names it); the worker also answers 408 (request not received in time), 417 and 431 before the "
        "app sees a request"
    ),
    "415": problem("unsupported Content-Type"),
    "422": problem(
        "an image could not be decoded, is of an undocumented format, or makes the network overflow, or an image "
        "URL could not be fetched (the problem names its index, and `url`)"
    ),
    "503": problem("models failed to load, the worker is stopping, or decoding memory is busy (see Retry-After)"),
}
