"""Validate responses against the service's own OpenAPI 3.1 document: from a real server (requests) or from
Flask's test client, whichever tier asks."""

from __future__ import annotations

import io
from functools import cache

import jsonschema
from PIL import Image
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from service.openapi import openapi_document


@cache
def _registry() -> Registry:
    return Registry().with_resource("urn:openapi", DRAFT202012.create_resource(openapi_document()))


def documented_media_type(content: dict, content_type: str) -> str:
    """The key of `content` that a response's Content-Type matches: the same type, and the same parameters where
    the document names some (the Prometheus exposition version, say)."""
    media_type, _, parameters = content_type.partition(";")
    for key in content:
        documented, _, documented_parameters = key.partition(";")
        if documented.strip() == media_type.strip():
            if documented_parameters:
                assert _parameters(parameters) == _parameters(documented_parameters), (
                    f"Content-Type {content_type!r}, documented as {key!r}"
                )
            return key
    raise AssertionError(f"{content_type} not documented (documented: {', '.join(content)})")


def _parameters(text: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in text.split(";") if item.strip())
    return {name.strip().lower(): value.strip() for name, _, value in pairs}


def conforms(response, path: str, method: str = "get") -> None:
    """Assert the response's status, media type and body are what the document promises for the operation.

    `response` is a requests.Response or a Flask test response (whose `json` is the body, not a method)."""
    operation = openapi_document()["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method.upper()} {path} may not answer {status}"
    content = operation["responses"][status].get("content")
    if content is None:
        return
    media_type = documented_media_type(content, response.headers["Content-Type"])
    if "json" not in media_type:  # pictures, tensor files, Prometheus text: the media type is the contract
        return
    schema = content[media_type]["schema"]
    if "$ref" in schema:
        schema = {"$ref": "urn:openapi" + schema["$ref"]}
    body = response.json() if callable(response.json) else response.json
    jsonschema.Draft202012Validator(schema, registry=_registry()).validate(body)


def conforming_png(response, path: str, method: str) -> Image.Image:
    """Assert the response is a 200 image/png the document promises for the operation; the decoded RGB image."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert "image/png" in openapi_document()["paths"][path][method]["responses"]["200"]["content"]
    data = response.content if hasattr(response, "content") else response.get_data()
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.mode == "RGB"
    return image
