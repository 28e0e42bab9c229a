"""The OpenAPI 3.1 contract of the service; the tests validate every real response against it and generate a
client from it (openapi-python-client), so it stays something generators can read: named schemas, no allOf,
binary strings marked `format: binary`, one place per option default (the body; query parameters have none).
"""

from service.openapi.document import openapi_document

__all__ = ["openapi_document"]
