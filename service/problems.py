"""The one place where errors become HTTP: a table from the core's error kinds to statuses, rendered as
RFC 9457 problem+json, plus the errors only HTTP has (a missing API key, a body of the wrong type, an answer
form nobody accepts).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from engine.errors import (
    Conflict,
    FeaturesError,
    InvalidInput,
    Misconfigured,
    TooLarge,
    Unavailable,
    UnknownName,
    Unprocessable,
)


class Unauthorized(FeaturesError):
    """No API key, or the wrong one."""


class UnsupportedMediaType(FeaturesError):
    """A body in a form the endpoint does not read."""


class NotAcceptable(FeaturesError):
    """An Accept header naming no form the endpoint can answer in; `facts["valid"]` lists those it can."""


STATUS_OF = {
    InvalidInput: 400,
    Unauthorized: 401,
    UnknownName: 404,
    NotAcceptable: 406,
    TooLarge: 413,
    Conflict: 409,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    Misconfigured: 500,
    Unavailable: 503,
    FeaturesError: 500,
}
DEFAULT_RETRY_AFTER_S = 2


def status_of(error: FeaturesError) -> int:
    """The status of the nearest kind in the table (an ImageError is Unprocessable, so 422)."""
    return next(STATUS_OF[kind] for kind in type(error).__mro__ if kind in STATUS_OF)


def problem(status: int, detail: str, facts: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    """The problem+json body: type, title, status, detail, then the error's facts and the request id."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    body.update(facts)
    if request_id:
        body["request_id"] = request_id
    return body


def problem_headers(status: int, facts: dict[str, Any]) -> dict[str, str]:
    """What a client needs to act on the status: the auth scheme for 401, when to retry a 503."""
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 503:
        return {"Retry-After": str(facts.get("retry_after", DEFAULT_RETRY_AFTER_S))}
    return {}
