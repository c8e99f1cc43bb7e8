"""The OpenAPI 3.1 document of the collection API, generated from the validating models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cdp import __version__
from cdp.ingest import BATCH_PATHS, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_REQUEST_BYTES, SHORT_PATHS
from cdp.segment import CALL_MODELS, AcceptedResponse, BatchRequest, ErrorResponse

_REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [*CALL_MODELS.values(), BatchRequest, AcceptedResponse, ErrorResponse]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return dict(top.get("$defs", {}))


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}}}


def _tracking_operation(call: str | None, path: str) -> dict[str, Any]:
    model = CALL_MODELS[call].__name__ if call else "BatchRequest"
    what = f"a {call} call" if call else f"a batch of up to {MAX_BATCH_EVENTS} calls"
    schema = {"$ref": _REF.format(model=model)}
    return {
        "operationId": f"post_{path.strip('/').replace('/', '_')}",
        "summary": f"Send {what}",
        "description": (
            f"Segment tracking API compatible. Write key as HTTP Basic username (empty password) or "
            f"`writeKey` in the body. Body JSON as application/json or text/plain, optionally "
            f"`Content-Encoding: gzip`. Limits: {MAX_REQUEST_BYTES} bytes per request, "
            f"{MAX_EVENT_BYTES} bytes per event."
            + ("" if call else " Invalid events are refused one by one and reported by index; "
               "the valid ones are accepted.")
        ),
        "tags": ["tracking"],
        "security": [{"writeKeyBasic": []}, {}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": schema}, "text/plain": {"schema": schema}}},
        "responses": {
            "200": {"description": "Accepted", "content": {
                "application/json": {"schema": {"$ref": _REF.format(model="AcceptedResponse")}}}},
            "400": _error("Invalid body or event; `error.field` names the field"),
            "401": _error("Missing, unknown or disabled write key"),
            "413": _error("Request or event too large"),
            "415": _error("Unsupported Content-Type or Content-Encoding"),
            "429": _error("Throttled; retry after the `Retry-After` seconds"),
            "503": _error("The event could not be stored; retry"),
        },
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    long_names = {call: call for call in CALL_MODELS}
    for short, call in SHORT_PATHS.items():
        long_names[short] = call
    for path_name, call in long_names.items():
        paths[f"/v1/{path_name}"] = {"post": _tracking_operation(call, f"/v1/{path_name}")}
    for batch_path in BATCH_PATHS:
        paths[f"/v1/{batch_path}"] = {"post": _tracking_operation(None, f"/v1/{batch_path}")}
    paths["/v1/projects/{writeKey}/settings"] = {"get": {
        "operationId": "get_project_settings",
        "summary": "analytics.js settings, so analytics-next loads from this host",
        "tags": ["tracking"],
        "parameters": [{"name": "writeKey", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "Settings", "content": {
            "application/json": {"schema": {"type": "object"}}}},
            "404": _error("Unknown or disabled write key")},
    }}
    paths["/health"] = {"get": {"operationId": "get_health", "summary": "Liveness",
                                "responses": {"200": {"description": "OK"}}}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "CDP collection API", "version": __version__,
                 "description": "Segment HTTP tracking API compatible collection endpoint."},
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"writeKeyBasic": {"type": "http", "scheme": "basic",
                                                  "description": "Write key as username, empty password"}},
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


SWAGGER_UI_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>CDP collection API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"});</script>
</body></html>"""
