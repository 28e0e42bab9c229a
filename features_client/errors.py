"""The client's one family of errors: what the service refused (its problem+json, by status), or could not reach.

Catch FeaturesClientError for everything; branch on the subclass (NotFound, TooLarge, Unavailable, ...) or on
`status`. `detail` is the server's sentence saying what to fix; `facts` the rest of its problem+json body (`valid`
names, a `limit`, the failing input's `index`), exactly as the server sent them.
"""

from __future__ import annotations

from typing import Any


class FeaturesClientError(Exception):
    """Root of the family: anything this client raises about the service or its answers."""


class FeaturesConnectionError(FeaturesClientError):
    """The service could not be reached (refused, reset, timed out), still so after the retries."""


class FeaturesResponseError(FeaturesClientError):
    """An answer that is not what the feature service sends: the wrong URL, a proxy's page, a model changed mid-call."""


class FeaturesHTTPError(FeaturesClientError):
    """The service answered with an error status; its problem+json (RFC 9457) is in the attributes.

    `index` is the failing input's position in the list given to the client method (the server's own
    `facts["index"]` counts within the one request that failed, which may be a part of a split batch).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        facts: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
        index: int | None = None,
    ):
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.facts = dict(facts or {})
        self.request_id = request_id
        self.retry_after = retry_after  # seconds, from the Retry-After header
        self.index = index

    @property
    def valid(self) -> list[str] | None:
        """The valid names, when the error is about a name (model, layer, option value)."""
        return self.facts.get("valid")

    @property
    def limit(self) -> int | None:
        """The limit exceeded (inputs per request, bytes), for a 413."""
        return self.facts.get("limit")


class BadRequest(FeaturesHTTPError):
    """400: an option, value or input that cannot work as given."""


class Unauthorized(FeaturesHTTPError):
    """401: the API key is missing or wrong."""


class Forbidden(FeaturesHTTPError):
    """403: the key is known but may not do this (admin routes)."""


class NotFound(FeaturesHTTPError):
    """404: an unknown model, layer, route or index entry; `valid` lists what exists."""


class NotAcceptable(FeaturesHTTPError):
    """406: the server cannot answer in the format asked for (Accept)."""


class Conflict(FeaturesHTTPError):
    """409: the request meets state that disagrees with it (an index built by another model version)."""


class TooLarge(FeaturesHTTPError):
    """413: beyond a limit of the deployment (`limit`): one input too large, or a batch the client cannot split."""


class UnsupportedMediaType(FeaturesHTTPError):
    """415: a body of a type the endpoint does not read."""


class Unprocessable(FeaturesHTTPError):
    """422: an input that cannot be processed (undecodable image, overflowing tensor); `index` names it."""


class RateLimited(FeaturesHTTPError):
    """429: too many requests; retried, then raised."""


class ServerError(FeaturesHTTPError):
    """5xx: the server failed (500 is a bug on its side and is not retried)."""


class Unavailable(ServerError):
    """502, 503, 504: not now (loading, stopping, busy, a proxy without its backend); retried, then raised."""


_BY_STATUS: dict[int, type[FeaturesHTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    406: NotAcceptable,
    409: Conflict,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_class(status: int) -> type[FeaturesHTTPError]:
    """The most specific class of the family for a status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else FeaturesHTTPError
