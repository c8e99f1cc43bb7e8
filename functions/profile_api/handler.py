"""Profile API: the Segment-compatible read API behind API Gateway (HTTP API, payload 2.0).

Route ``GET /v1/spaces/{proxy+}``. Translates HTTP to ``cdp.profile_api.ApiRequest`` and
back; authorization, lookups, pagination and response shapes live in ``cdp.profile_api``.
No CORS: the Profile API is for servers (a token reads every profile of the space).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.access_tokens import AccessTokenRegistry, CachedTokenLookup
from cdp.aws.clients import client, table
from cdp.aws.identity_config_store import IdentityConfigStore
from cdp.aws.membership_store import MembershipStore
from cdp.aws.profile_tables import DynamoProfileTables
from cdp.config import get_settings, identity_config
from cdp.observability import logger, metrics, tracer
from cdp.profile_api import COMMON_HEADERS, ApiRequest, ApiResponse, ProfileApi
from cdp.profiles import ProfileReader
from cdp.segmentation.catalog import CatalogStore

app = APIGatewayHttpResolver()


@lru_cache(maxsize=1)
def dependencies() -> ProfileApi:
    settings = get_settings()
    tokens = CachedTokenLookup(AccessTokenRegistry(table(settings.sources_table)),
                               ttl_seconds=settings.access_token_cache_seconds)
    ddb = client("dynamodb")
    reader = ProfileReader(DynamoProfileTables(ddb, settings.identity_table, settings.events_table))
    # The identity settings in force (an admin may change them), to normalise as the consumer does.
    identity = IdentityConfigStore(ddb, settings.identity_table, identity_config(settings),
                                   cache_seconds=settings.identity_config_cache_seconds)
    catalog = CatalogStore(ddb, settings.segments_table, cache_seconds=settings.segments_cache_seconds)
    memberships = MembershipStore(ddb, settings.memberships_table)
    return ProfileApi(reader, tokens.find, settings.space_id, identity.current, keep_ip=settings.keep_ip,
                      catalog=catalog.current,
                      audiences=lambda pid: {aid: m.member for aid, m in memberships.of_profile(pid).items()})


def _respond(result: ApiResponse) -> Response:
    metrics.add_metric(name="ProfileRequests", unit=MetricUnit.Count, value=1)
    if result.status in (401, 403):
        metrics.add_metric(name="ProfileRequestsRefused", unit=MetricUnit.Count, value=1)
    elif result.status == 404:
        metrics.add_metric(name="ProfilesNotFound", unit=MetricUnit.Count, value=1)
    # No path, identifier or token in the logs: they are personal data or secrets.
    logger.info("profile request", extra={"resource": result.resource, "status": result.status,
                                          "code": result.code})
    return Response(status_code=result.status, content_type="application/json", headers=result.headers,
                    body=json.dumps(result.body, separators=(",", ":"), ensure_ascii=False))


# A regular expression rather than <name> path variables: identifier values may hold
# any character (Powertools' variables stop at "/", "#", "?" and non-word symbols);
# cdp.profile_api parses the path itself.
@app.get("/v1/spaces/.+")
def profile_request() -> Response:
    event = app.current_event
    request = ApiRequest(path=event.path, query=dict(event.query_string_parameters or {}),
                         authorization=(event.headers or {}).get("authorization"))
    return _respond(dependencies().handle(request))


@app.not_found
def not_found(_exc: Exception) -> Response:
    return Response(status_code=404, content_type="application/json", headers=dict(COMMON_HEADERS),
                    body=json.dumps({"error": {"code": "not_found", "message": "No such path."}}))


@app.exception_handler(Exception)
def internal_error(exc: Exception) -> Response:
    logger.exception("profile request failed", extra={"error": type(exc).__name__})
    metrics.add_metric(name="ProfileRequestsFailed", unit=MetricUnit.Count, value=1)
    return Response(status_code=500, content_type="application/json", headers=dict(COMMON_HEADERS),
                    body=json.dumps({"error": {"code": "internal_error", "message": "Something went wrong; retry."}}))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
