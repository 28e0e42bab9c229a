"""One exception family for every request failure, rendered as RFC 9457 problem+json in one place."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class ProblemError(Exception):
    """A request that cannot be served; `detail` tells the client what to fix."""

    status = 400

    def __init__(self, detail: str, status: int | None = None, **extensions: Any):
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.extensions = extensions

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        body = {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail}
        body.update(self.extensions)
        if request_id:
            body["request_id"] = request_id
        return body


class BadRequest(ProblemError):
    status = 400


class Unauthorized(ProblemError):
    status = 401


class NotFound(ProblemError):
    status = 404


class PayloadTooLarge(ProblemError):
    status = 413


class UnsupportedMediaType(ProblemError):
    status = 415


class UnprocessableImage(ProblemError):
    status = 422


class NotReady(ProblemError):
    status = 503
