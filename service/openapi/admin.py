"""The operators' calls behind the admin key (model reloads): their schemas and paths."""

from __future__ import annotations

from engine.reload import STATUSES
from service.openapi.common import ERRORS, ok, problem, ref
from service.openapi.schemas import PROBLEM, PROBLEM_REQUIRED

_RELOAD_REPORT = {
    "models": ref("ReloadOutcomes"),
    "other_workers_signalled": {
        "type": "boolean",
        "description": "the gunicorn master was sent SIGHUP, so every other worker reloads too (several workers)",
    },
}
ADMIN_SCHEMAS = {
    "ReloadStatus": {"enum": list(STATUSES)},
    "ModelReload": {
        "type": "object",
        "required": ["status", "sha256", "previous_sha256", "error"],
        "properties": {
            "status": ref("ReloadStatus"),
            "sha256": {"type": ["string", "null"], "description": "the export serving the name now (null: none)"},
            "previous_sha256": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"], "description": "why it failed"},
        },
        "description": "what one reload did to one model name",
    },
    "ReloadOutcomes": {"type": "object", "additionalProperties": ref("ModelReload"), "description": "by model"},
    "ReloadReport": {"type": "object", "required": list(_RELOAD_REPORT), "properties": _RELOAD_REPORT},
    "ReloadProblem": {
        "type": "object",
        "required": [*PROBLEM_REQUIRED, *_RELOAD_REPORT],
        "properties": {**PROBLEM, **_RELOAD_REPORT},
        "description": "a reload in which some model failed: a problem that also holds the whole report",
    },
    "LastReload": {
        "type": "object",
        "required": ["status", "at", "error"],
        "properties": {
            "status": ref("ReloadStatus"),
            "at": {"type": "string", "format": "date-time", "description": "when the reload ended (UTC)"},
            "error": {"type": ["string", "null"]},
        },
    },
}
ADMIN_PATHS = {
    "/v1/admin/reload": {
        "post": {
            "operationId": "reload_models",
            "tags": ["admin"],
            "summary": "reload the models folder in place, in every worker: changed exports replace the served "
            "ones once loaded and warmed up, without a failed request (docs/operations.md)",
            "security": [{"adminKey": []}],
            "responses": {
                "200": ok("ReloadReport", "what the reload did to each model"),
                "401": problem("missing or wrong admin key"),
                "403": problem("admin calls are off: the service has no FEATURES_ADMIN_KEY"),
                "422": {
                    "description": "some model failed to reload and keeps serving its previous export, if it had "
                    "one; `models` says why",
                    "content": {"application/problem+json": {"schema": ref("ReloadProblem")}},
                },
                "503": ERRORS["503"],
            },
        }
    }
}
