"""Collector: the Segment-compatible HTTP API behind API Gateway (HTTP API, payload 2.0).

Routing, CORS and response shaping only; the rules live in ``cdp.ingest``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, CORSConfig, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.aws.clients import client, table
from cdp.aws.event_stream import KinesisEventStream
from cdp.config import get_settings
from cdp.ingest import (
    EventStreamWriter,
    RequestRejected,
    SourceLookup,
    StreamThrottled,
    StreamUnavailable,
    collect,
    header,
)
from cdp.observability import logger, metrics, tracer
from cdp.openapi import SWAGGER_UI_HTML, openapi_document
from cdp.settings_document import analytics_js_settings
from cdp.sources import CachedSourceLookup, SourceRegistry

RETRY_AFTER_S = "2"
TRACKING_ROUTES = ("identify", "track", "page", "screen", "group", "alias", "batch", "import",
                   "i", "t", "p", "s", "g", "a", "b")

app = APIGatewayHttpResolver(
    cors=CORSConfig(
        allow_origin="*",
        allow_headers=["Content-Type", "Content-Encoding", "Authorization"],
        max_age=86400,
    )
)


@dataclass
class Dependencies:
    lookup: SourceLookup
    writer: EventStreamWriter


@lru_cache(maxsize=1)
def dependencies() -> Dependencies:
    settings = get_settings()
    registry = SourceRegistry(table(settings.sources_table))
    return Dependencies(
        lookup=CachedSourceLookup(registry, ttl_seconds=settings.source_cache_seconds).find,
        writer=KinesisEventStream(client("kinesis"), settings.event_stream),
    )


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type="application/json",
                    body=json.dumps(body, separators=(",", ":")), headers=headers)


def _request_bytes() -> bytes:
    event = app.current_event
    body = event.body or ""
    if event.is_base64_encoded:
        return base64.b64decode(body)
    return body.encode("utf-8")


def _track(route: str) -> Response:
    event = app.current_event
    deps = dependencies()
    try:
        result = collect(route, _request_bytes(), dict(event.headers or {}), deps.lookup, deps.writer,
                         source_ip=event.request_context.http.source_ip)
    except RequestRejected as rejected:
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        logger.info("request rejected", extra={"route": route, "status": rejected.status,
                                                "code": rejected.code})
        return _json(rejected.status, rejected.body())
    except StreamThrottled:
        metrics.add_metric(name="RequestsThrottled", unit=MetricUnit.Count, value=1)
        logger.warning("stream throttled", extra={"route": route})
        return _json(429, {"success": False, "error": {"code": "throttled",
                                                        "message": "too many events; retry later"}},
                     headers={"Retry-After": RETRY_AFTER_S})
    except StreamUnavailable:
        metrics.add_metric(name="StoreFailures", unit=MetricUnit.Count, value=1)
        logger.exception("events not stored", extra={"route": route})
        return _json(503, {"success": False, "error": {"code": "unavailable",
                                                        "message": "events were not stored; retry"}},
                     headers={"Retry-After": RETRY_AFTER_S})
    metrics.add_metric(name="EventsAccepted", unit=MetricUnit.Count, value=result.accepted)
    if result.rejected:
        metrics.add_metric(name="EventsRejected", unit=MetricUnit.Count, value=len(result.rejected))
    return _json(200, result.body())


for _route in TRACKING_ROUTES:
    app.route(f"/v1/{_route}", method="POST")(lambda _r=_route: _track(_r))


@app.post("/v1/<route>")
def unknown_tracking_route(route: str) -> Response:
    return _json(404, {"success": False, "error": {
        "code": "unknown_route", "message": f"/v1/{route} is not a tracking endpoint"}})


@app.get("/v1/projects/<write_key>/settings")
def project_settings(write_key: str) -> Response:
    source = dependencies().lookup(write_key)
    if source is None or not source.enabled:
        return _json(404, {"success": False, "error": {"code": "unknown_write_key",
                                                        "message": "no enabled source has this write key"}})
    event = app.current_event
    host = header(dict(event.headers or {}), "host") or event.request_context.domain_name
    protocol = header(dict(event.headers or {}), "x-forwarded-proto") or "https"
    return _json(200, analytics_js_settings(write_key, host, protocol))


@app.get("/openapi.json")
def openapi_json() -> Response:
    return _json(200, openapi_document())


@app.get("/docs")
def swagger_ui() -> Response:
    return Response(status_code=200, content_type="text/html", body=SWAGGER_UI_HTML)


@app.get("/health")
def health() -> Response:
    return _json(200, {"status": "ok"})


def _allowed_methods(path: str) -> str | None:
    """The methods a known path accepts, for a 405 instead of a 404."""
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "v1":
        return "POST, OPTIONS"
    if len(parts) == 4 and parts[:2] == ["v1", "projects"] and parts[3] == "settings":
        return "GET"
    if path in ("/openapi.json", "/docs", "/health"):
        return "GET"
    return None


@app.not_found
def not_found(_exc: Exception) -> Response:
    allowed = _allowed_methods(app.current_event.path)
    # A path of the right shape whose variable no route matched (a write key with a
    # character Powertools' path variables do not take, as API Gateway hands paths over
    # decoded) was asked with the right method: it names nothing, 404 rather than 405.
    if allowed and app.current_event.http_method.upper() not in {m.strip() for m in allowed.split(",")}:
        return _json(405, {"success": False, "error": {
            "code": "method_not_allowed", "message": f"use {allowed.split(',')[0]} for this path"}},
            headers={"Allow": allowed})
    return _json(404, {"success": False, "error": {"code": "not_found", "message": "no such route"}})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
