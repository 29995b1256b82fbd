"""The api's OpenAPI document, with every request body described.

The routes read their bodies themselves (``parse`` in ``bodies.py``: the raw bytes, bounded, then the
pydantic model), so FastAPI cannot see them; and the busiest route, ``POST /v1/runs``, is a plain
Starlette route (decision 0007). This module adds what FastAPI leaves out: each body's schema, from
the same models the routes validate with, and the trigger route itself, so the document describes
every request the api takes and a property-based fuzzer (schemathesis, tests/unit/test_api_fuzz.py)
can exercise all of them. The ``Authorization: Bearer`` scheme is declared where the api has tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from stepstream.api.inputs import CancelBody, CancelFilterBody, NotifyBody, RecoverBody, TriggerBody

# (method, path) -> the body's model, and whether the body may be left out.
BODIES: dict[tuple[str, str], tuple[type[BaseModel], bool]] = {
    ("post", "/v1/runs"): (TriggerBody, True),
    ("post", "/v1/runs/cancel"): (CancelFilterBody, True),
    ("post", "/v1/runs/{run_id}/cancel"): (CancelBody, False),
    ("post", "/v1/events/{event_id}/notify"): (NotifyBody, False),
    ("post", "/v1/deadletter/{run_id}/resume"): (RecoverBody, False),
    ("post", "/v1/deadletter/{run_id}/restart"): (RecoverBody, False),
    ("delete", "/v1/deadletter/{run_id}"): (RecoverBody, False),
}

_TRIGGER = {
    "summary": "Start a run",
    "description": "docs/api.md, POST /v1/runs: 202 with the run id; 200 for a run id the store knows.",
    "operationId": "trigger_v1_runs_post",
    "parameters": [
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "Also wait for the run to end, such as '30s' (at most '5m')",
        }
    ],
    "responses": {
        "200": {"description": "A run with this id exists already, or it ended within the wait"},
        "202": {"description": "Accepted: the run starts"},
    },
}


def openapi_of(app: FastAPI, *, tokens: bool) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's document, with the request bodies, the trigger route and the token scheme."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        paths = spec.setdefault("paths", {})
        paths.setdefault("/v1/runs", {})["post"] = dict(_TRIGGER)
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for (method, path), (model, required) in BODIES.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            operation = paths[path][method]
            operation["requestBody"] = {
                "required": required,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
            }
        if tokens:
            spec["components"]["securitySchemes"] = {"token": {"type": "http", "scheme": "bearer"}}
            for path, operations in paths.items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation["security"] = [{"token": []}]
        app.openapi_schema = spec
        return spec

    return document
