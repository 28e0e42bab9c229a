"""Structured logs: one JSON object per line (time, level, logger, message, request id, extra fields).

Used by the app's own loggers and by gunicorn's error log (gunicorn.conf.py), so a log shipper reads one format.
The access log is written by the app (logger `service.access`) because only the app knows the request id.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime

import orjson

# attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(header: str | None) -> str:
    """A client's X-Request-ID when it is safe to echo and log, else a fresh one."""
    return header if header and _REQUEST_ID.match(header) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id()
        if request_id:
            entry["request_id"] = request_id
        entry.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _request_id() -> str | None:
    """The current request's id, when logging from inside a Flask request."""
    from flask import g, has_request_context

    return g.get("request_id") if has_request_context() else None


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str, fmt: str) -> None:
    """Root logger -> stderr in the chosen format (replaces handlers, so calling it again is harmless)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
