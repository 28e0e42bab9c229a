"""create_app(settings): the only way to build the web app; wires registry, routes, auth, ids and errors.

Model sessions are opened here, i.e. in each gunicorn worker after the fork, in a background thread so
/healthz answers at once and /readyz says 503 until every model is loaded and warmed up.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from service.errors import ProblemError, Unauthorized
from service.picture_routes import PAGE_PATHS, pictures
from service.registry import Registry
from service.routes import api, json_response
from service.settings import Settings

log = logging.getLogger("service")
OPEN_PATHS = {"/healthz", "/readyz", *PAGE_PATHS}  # probes and the data-free page stay reachable without the API key
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings: Settings | None = None, load_in_background: bool = True) -> Flask:
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = Registry(settings)
    registry.check()  # StartupError: bad manifest or checksum stops the worker with one line
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["registry"] = registry
    app.register_blueprint(api)
    app.register_blueprint(pictures)
    _install_request_ids(app)
    _install_auth(app, settings)
    _install_error_handlers(app)
    if load_in_background:
        registry.load_in_background()
    else:
        registry.load()
    return app


def _install_request_ids(app: Flask) -> None:
    @app.before_request
    def assign_request_id():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def return_request_id(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response


def _install_auth(app: Flask, settings: Settings) -> None:
    if not settings.api_key:
        return
    expected = f"Bearer {settings.api_key}".encode()

    @app.before_request
    def require_api_key():
        if request.path in OPEN_PATHS:
            return None
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'")
        return None


def _problem(error: ProblemError):
    request_id = g.get("request_id")
    response = json_response(error.to_dict(request_id), error.status)
    response.mimetype = "application/problem+json"
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if error.status == 503:
        response.headers["Retry-After"] = "2"
    level = logging.WARNING if error.status >= 500 else logging.INFO
    log.log(level, "request %s %s %s -> %d %s", request_id, request.method, request.path, error.status, error.detail)
    return response


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ProblemError)
    def problem(error: ProblemError):
        return _problem(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        detail = error.description or error.name
        if error.code == 413:
            detail = f"request body is larger than the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
        if error.code == 404:
            detail = f"no route {request.path}; see /openapi.json"
        response = _problem(ProblemError(detail, status=error.code or 500))
        if error.code == 405:
            response.headers["Allow"] = ", ".join(error.valid_methods or [])
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("request %s failed unexpectedly", g.get("request_id"))
        return _problem(ProblemError("internal error; the request id identifies it in the server log", status=500))
