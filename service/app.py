"""create_app(settings): the only way to build the web app; wires registry, reloader, routes, auth, ids and errors.

Model sessions are opened here, i.e. in each gunicorn worker after the fork and before it accepts a connection,
so a worker never takes requests it can only refuse; /readyz says 503 only if loading failed.
"""

from __future__ import annotations

import hmac
import logging
import time

from flask import Flask, g, request
from werkzeug.exceptions import Forbidden, HTTPException

from engine.decode_budget import DecodeBudget
from engine.errors import FeaturesError
from engine.registry import Registry
from engine.reload import Reloader
from engine.settings import Settings
from engine.vector_index import open_index
from service import logs, metrics
from service.admin_routes import ADMIN_PREFIX, admin
from service.picture_routes import PAGE_PATHS, pictures
from service.problems import Unauthorized, problem, problem_headers, status_of
from service.request_steps import json_response, release_models
from service.routes import api
from service.search_routes import search_routes
from service.v2_framing import speaks_v2
from service.v2_routes import HEALTH_PATHS as V2_HEALTH_PATHS
from service.v2_routes import v2

log = logging.getLogger("service")
access = logging.getLogger("service.access")
OPEN_PATHS = {"/healthz", "/readyz", *V2_HEALTH_PATHS, *PAGE_PATHS}  # probes and the data-free page: no API key
FORM_OPTION_PARTS = 64  # multipart parts allowed beyond the images, for options sent as repeated fields


def create_app(settings: Settings | None = None, load_in_background: bool = False) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    registry = Registry(settings, batch_observer=metrics.batch_observer)
    registry.check()  # Misconfigured: a bad manifest or checksum stops the worker with one line
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_PARTS"] = settings.max_images + FORM_OPTION_PARTS  # images plus option fields
    app.extensions["registry"] = registry
    app.extensions["reloader"] = Reloader(registry, on_outcome=metrics.model_reloaded)
    app.extensions["decode_budget"] = DecodeBudget(settings.decode_budget_mb * 1_000_000, settings.decode_wait)
    app.register_blueprint(api)
    app.register_blueprint(pictures)
    app.register_blueprint(search_routes)
    app.register_blueprint(admin)
    app.register_blueprint(v2)
    app.extensions["index"] = open_index(settings.index) if settings.index else None  # opened lazily
    _install_request_ids(app)
    app.teardown_request(lambda _error: release_models())  # a reload closes a model once no request holds it
    _install_metrics_and_access_log(app)
    _install_auth(app, settings)
    _install_error_handlers(app)
    # A worker loads before it accepts anything (the kernel queues connections meanwhile): one still loading
    # would take connections it can only refuse while a ready one idles, after a crash as much as at start, and
    # however the worker count was set. Background loading is for in-process use. (SIGHUP and the admin call
    # reload the models in place, in the workers already serving: engine/reload.py.)
    if load_in_background:
        registry.load_in_background()
    else:
        registry.load()
    return app


def _install_request_ids(app: Flask) -> None:
    @app.before_request
    def assign_request_id():
        g.request_id = logs.request_id_from(request.headers.get("X-Request-ID"))

    @app.after_request
    def return_request_id(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        return response


def _install_metrics_and_access_log(app: Flask) -> None:
    """Count and time every request by route template (bounded label values), and log it as one line."""

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()
        g.in_flight = True
        metrics.IN_FLIGHT.inc()

    @app.after_request
    def count_request(response):
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(metrics.method_label(request.method), route, str(response.status_code)).inc()
        metrics.LATENCY.labels(route).observe(elapsed)
        access.info(
            "%s %s %d",
            request.method,
            request.path,
            response.status_code,
            extra={"status": response.status_code, "duration_ms": round(elapsed * 1e3, 2),
                   "bytes": response.calculate_content_length(), "remote": request.remote_addr},
        )  # fmt: skip
        return response

    @app.teardown_request
    def leave(_error):
        if g.pop("in_flight", False):
            metrics.IN_FLIGHT.dec()


def _install_auth(app: Flask, settings: Settings) -> None:
    """The API key guards the data routes; admin routes take the admin key instead, and are off without one."""
    api_key = f"Bearer {settings.api_key}".encode() if settings.api_key else None
    admin_key = f"Bearer {settings.admin_key}".encode() if settings.admin_key else None

    @app.before_request
    def require_key():
        given = request.headers.get("Authorization", "").encode()
        if request.path.startswith(ADMIN_PREFIX):
            if admin_key is None:
                raise Forbidden("admin calls are off; set FEATURES_ADMIN_KEY (or FEATURES_ADMIN_KEY_FILE) to enable "
                                "them and send 'Authorization: Bearer <admin key>'")  # fmt: skip
            if not hmac.compare_digest(given, admin_key):
                raise Unauthorized("missing or wrong admin key; send 'Authorization: Bearer <admin key>'")
            return None
        if api_key is not None and request.path not in OPEN_PATHS and not hmac.compare_digest(given, api_key):
            raise Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'")
        return None


def _problem(status: int, detail: str, facts: dict | None = None):
    """Every error answer: problem+json with the request id, counted, logged (5xx as warnings)."""
    facts = facts or {}
    request_id = g.get("request_id")
    body = problem(status, detail, facts, request_id)
    if speaks_v2(request.path):  # the Open Inference Protocol's own error form
        response = json_response({"error": detail}, status)
    else:
        response = json_response(body, status)
        response.mimetype = "application/problem+json"
    response.headers.update(problem_headers(status, facts))
    metrics.ERRORS.labels(str(status), body["title"]).inc()
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "request %s %s %s -> %d %s", request_id, request.method, request.path, status, detail)
    return response


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(FeaturesError)
    def features_error(error: FeaturesError):
        return _problem(status_of(error), error.detail, error.facts)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        detail, facts = error.description or error.name, {}
        if error.code == 413:  # werkzeug's only other 413s (form limits) are named in service/inputs.py
            limit = app.config["MAX_CONTENT_LENGTH"]
            detail, facts = f"request body is larger than the limit of {limit} bytes", {"limit": limit}
        if error.code == 404:
            detail = f"no route {request.path}; see /openapi.json"
        response = _problem(error.code or 500, detail, facts)
        if error.code == 405:
            response.headers["Allow"] = ", ".join(error.valid_methods or [])
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("request %s failed unexpectedly", g.get("request_id"))
        return _problem(500, "internal error; the request id identifies it in the server log")
