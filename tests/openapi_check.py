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


def conforms(response, path: str, method: str = "get") -> None:
    """Assert the response's status, media type and body are what the document promises for the operation.

    `response` is a requests.Response or a Flask test response (whose `json` is the body, not a method)."""
    operation = openapi_document()["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method.upper()} {path} may not answer {status}"
    content = operation["responses"][status].get("content")
    if content is None:
        return
    media_type = response.headers["Content-Type"].split(";")[0]
    assert media_type in content, f"{media_type} not documented for {status}"
    if "json" not in media_type:  # PNG pictures, Prometheus text: the media type is the contract
        return
    pointer = content[media_type]["schema"]["$ref"].removeprefix("#")
    schema = {"$ref": f"urn:openapi#{pointer}"}
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
