"""HTTP to one service: the API key, a session per thread, retries with backoff, error answers as exceptions.

Retried: connection errors and timeouts (every request of this API is safe to repeat), 429, 502, 503 and 504,
waiting the longer of the backoff (doubling, with jitter) and the server's Retry-After (capped). Never retried:
any other status; what to do with a 413 or a 422 is the caller's decision (see client.py).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from datetime import UTC, datetime

from features_client.errors import FeaturesConnectionError, FeaturesHTTPError, FeaturesResponseError, error_class

try:
    import requests
except ImportError as exc:  # the `client` extra
    raise ImportError("features_client needs requests: pip install 'cnn-features[client]'", name="requests") from exc

log = logging.getLogger("features_client")
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
RETRY_AFTER_CAP_S = 30.0  # a Retry-After beyond this is waited for this long, then asked again


class Transport:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float | tuple[float, float],
        retries: int,
        backoff: tuple[float, float],
        session: requests.Session | None,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"the service URL {url!r} must start with http:// or https://")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        self.url = url.rstrip("/")
        self.headers = {"User-Agent": f"features-client python-requests/{requests.__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._given = session
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        """The session given, or one of this thread's own (a requests.Session is not meant to be shared)."""
        if self._given is not None:
            return self._given
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(self._local.session)
        return self._local.session

    def close(self) -> None:
        """Close the sessions this transport made (a session given to it is the caller's to close)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, retry: bool = True, **kwargs
    ) -> requests.Response:
        """The first answer not worth retrying, whatever its status; FeaturesConnectionError when the service
        stays unreachable, the status's error (Unavailable, RateLimited) when it keeps answering one to retry.
        `retry=False`: one attempt."""
        url = self.url + path
        headers = {**self.headers, **(headers or {})}
        delay, cap = self.backoff
        retries = self.retries if retry else 0
        for attempt in range(retries + 1):
            try:
                response = self.session().request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == retries:
                    raise FeaturesConnectionError(f"cannot reach {self.url}: {exc}") from exc
                wait, reason = delay, type(exc).__name__
            else:
                if response.status_code not in RETRIED_STATUSES:
                    return response
                if attempt == retries:
                    raise problem_error(response)
                wait, reason = max(delay, retry_after(response) or 0.0), f"HTTP {response.status_code}"
                response.close()
            wait *= 1 - 0.25 * random.random()  # jitter: clients turned away together do not return together
            log.info("retrying %s %s in %.2f s (%s; retry %d of %d)", method, path, wait, reason, attempt + 1,
                     retries)  # fmt: skip
            time.sleep(wait)
            delay = min(delay * 2, cap)
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        """`request`, with any answer but a 2xx raised as its FeaturesHTTPError."""
        response = self.request(method, path, **kwargs)
        if not 200 <= response.status_code < 300:
            raise problem_error(response)
        return response

    def json(self, method: str, path: str, **kwargs):
        """The JSON body of a 2xx answer; FeaturesResponseError when it is not JSON."""
        return json_body(self.call(method, path, **kwargs))


def json_body(response: requests.Response):
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no Content-Type")
        raise FeaturesResponseError(
            f"{response.request.method} {response.url} answered {kind}, not JSON: is this the feature service?"
        ) from None


def problem_error(response: requests.Response) -> FeaturesHTTPError:
    """The error for an error answer: problem+json read into status, title, detail and facts; any other body
    (a proxy's HTML page) becomes the detail, shortened."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": (response.text or "").strip()[:300] or f"HTTP {status}"}
    facts = {key: value for key, value in body.items() if key not in {"type", "title", "status", "detail"}}
    request_id = facts.pop("request_id", None) or response.headers.get("X-Request-ID")
    return error_class(status)(
        status,
        str(body.get("title") or response.reason or "Error"),
        str(body.get("detail") or f"HTTP {status}"),
        facts,
        request_id=request_id,
        retry_after=retry_after(response),
    )


def retry_after(response: requests.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), capped; None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (email.utils.parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)
