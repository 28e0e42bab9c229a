"""Validate real HTTP responses against the service's own OpenAPI 3.1 document."""

from __future__ import annotations

from functools import cache

import jsonschema
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from service.openapi import openapi_document


@cache
def _registry() -> Registry:
    return Registry().with_resource("urn:openapi", DRAFT202012.create_resource(openapi_document()))


def conforms(response, path: str, method: str = "get") -> None:
    """Assert the response's status, media type and body are what the document promises for the operation."""
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
    jsonschema.Draft202012Validator(schema, registry=_registry()).validate(response.json())
