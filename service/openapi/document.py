"""The whole document: info, tags, security schemes, the probes, models and features paths, and the assembly of
every part's paths and schemas in the order the document has always had (/v2 after /v1)."""

from __future__ import annotations

from functools import cache

from prometheus_client import CONTENT_TYPE_LATEST

from service.openapi.admin import ADMIN_PATHS, ADMIN_SCHEMAS
from service.openapi.common import BINARY, ERRORS, STRING, ok, problem, ref
from service.openapi.options import FEATURE_OPTIONS, image_body, query_parameters
from service.openapi.pictures import LABELS, PICTURE_SCHEMAS, picture_paths
from service.openapi.schemas import SCHEMAS
from service.openapi.search import SEARCH_SCHEMAS, search_paths
from service.openapi.v2 import TAG as V2_TAG
from service.openapi.v2 import TAG_DESCRIPTION as V2_TAG_DESCRIPTION
from service.openapi.v2 import V2_SCHEMAS, v2_paths
from service.responses import NPZ, SAFETENSORS

_SECURITY = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "FEATURES_API_KEY: every route but the probes (/v2/health/* too) and the page needs it when "
        "the service has one (401 otherwise); a service without one takes requests without it",
    },
    "adminKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "FEATURES_ADMIN_KEY, for the admin routes only (403 when the service has none)",
    },
}


@cache
def openapi_document() -> dict:
    model = {"name": "model_name", "in": "path", "required": True, "schema": STRING, "example": "efficientnet_lite0"}
    binary_answer = "tensors {layer}/{pooling} [N, …] (and top/index, top/probability with top=k); the rest of the "
    features_ok = {
        "description": "embeddings, in input order; by the Accept header: JSON (the default), or one tensor per "
        "layer and pooling in a safetensors file or an npz archive",
        "content": {
            "application/json": {"schema": ref("FeaturesResponse")},
            SAFETENSORS: {
                "schema": {
                    **BINARY,
                    "description": binary_answer + "answer as JSON in the header's __metadata__['response']",
                }
            },
            NPZ: {
                "schema": {
                    **BINARY,
                    "description": binary_answer + "answer as JSON in the member __response__ (no pickle)",
                }
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cnn-features",
            "version": "1.0.0",
            "description": "Low-, mid- and high-level CNN embeddings of images, layer by layer.",
        },
        # the key is needed only where the service has one: `{}` says a request without it may be answered too
        "security": [{"apiKey": []}, {}],
        "tags": [
            {"name": "probes", "description": "liveness, readiness, metrics and this document"},
            {"name": "models", "description": "the models served, their layers and labels"},
            {"name": "features", "description": "embeddings of images, layer by layer"},
            {"name": "pictures", "description": "filters, activation maps and the page"},
            {"name": "search", "description": "nearest indexed images per layer"},
            {"name": "admin", "description": "operators' calls, behind the admin key"},
            {"name": V2_TAG, "description": V2_TAG_DESCRIPTION},
        ],
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "get_health",
                    "tags": ["probes"],
                    "summary": "liveness",
                    "security": [],
                    "responses": {"200": ok("Health", "alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "get_readiness",
                    "tags": ["probes"],
                    "summary": "readiness: every model loaded and warmed up",
                    "security": [],
                    "responses": {"200": ok("Ready", "ready"), "503": ERRORS["503"]},
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "list_models",
                    "tags": ["models"],
                    "summary": "the models served",
                    "responses": {"200": ok("ModelList", "models"), "401": ERRORS["401"]},
                }
            },
            "/v1/models/{model_name}": {
                "get": {
                    "operationId": "get_model",
                    "tags": ["models"],
                    "summary": "layer catalogue, preprocessing, provider in use",
                    "parameters": [model],
                    "responses": {"200": ok("ModelDetail", "the model"), "401": ERRORS["401"], "404": ERRORS["404"]},
                }
            },
            "/v1/models/{model_name}/features": {
                "post": {
                    "operationId": "extract_features",
                    "tags": ["features"],
                    "summary": "per-level, per-layer embeddings of one or more images",
                    "parameters": [model, *query_parameters(FEATURE_OPTIONS)],
                    "requestBody": image_body("FeaturesForm", "FeaturesJSONRequest"),
                    "responses": {
                        "200": features_ok,
                        **ERRORS,
                        "406": problem(f"the Accept header allows none of application/json, {SAFETENSORS}, {NPZ}"),
                    },
                }
            },
            **picture_paths(model),
            **search_paths(model),
            **ADMIN_PATHS,
            **v2_paths(model),
            "/openapi.json": {
                "get": {
                    "operationId": "get_openapi",
                    "tags": ["probes"],
                    "summary": "this document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": ERRORS["401"],
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "get_metrics",
                    "tags": ["probes"],
                    "summary": "Prometheus metrics of every worker (requests, latency, images, batch sizes, errors)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format, as prometheus_client writes it",
                            "content": {CONTENT_TYPE_LATEST: {"schema": STRING}},
                        },
                        "401": ERRORS["401"],
                    },
                }
            },
        },
        "components": {
            "schemas": {
                **SCHEMAS,
                **SEARCH_SCHEMAS,
                **PICTURE_SCHEMAS,
                **ADMIN_SCHEMAS,
                "Labels": LABELS,
                **V2_SCHEMAS,
            },
            "securitySchemes": _SECURITY,
        },
    }
