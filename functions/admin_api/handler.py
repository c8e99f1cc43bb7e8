"""Admin API: identity settings and segment definitions (``cdp.admin_api``), behind the HTTP API.

Route ``ANY /v1/admin/{proxy+}``; an access token of scope ``admin`` is required. Writes
go to the one settings item of the identity table and to the segments table.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.access_tokens import AccessTokenRegistry, CachedTokenLookup
from cdp.admin_api import AdminApi
from cdp.aws.account_traits import AccountTraits
from cdp.aws.audience_preview import AudiencePreview
from cdp.aws.backfill_store import backfill_status
from cdp.aws.clients import client, table
from cdp.aws.definition_store import DefinitionStore
from cdp.aws.delivery_log import DeliveryLog
from cdp.aws.destination_admin import deployed_destinations, destination_status, queues_of
from cdp.aws.identity_config_store import IdentityConfigStore
from cdp.aws.membership_store import MembershipStore
from cdp.config import get_settings, identity_config
from cdp.observability import logger, metrics, tracer
from cdp.segmentation.catalog import CatalogStore, SpecRegistry


@lru_cache(maxsize=1)
def dependencies() -> AdminApi:
    settings = get_settings()
    # No cache of positive lookups: a revoked admin token stops working at once.
    tokens = CachedTokenLookup(AccessTokenRegistry(table(settings.sources_table)), ttl_seconds=0,
                               negative_ttl_seconds=0)
    ddb = client("dynamodb")
    store = IdentityConfigStore(ddb, settings.identity_table, identity_config(settings))
    specs = SpecRegistry(ddb, settings.segments_table, settings.segments_cache_seconds)
    memberships = MembershipStore(ddb, settings.memberships_table)
    catalog = CatalogStore(ddb, settings.segments_table, cache_seconds=settings.segments_cache_seconds)
    accounts = AccountTraits(ddb, settings.events_table, settings.identity_table)
    previews = AudiencePreview(ddb, settings.identity_table, settings.events_table, memberships, accounts.of_groups)
    log = DeliveryLog(ddb, settings.delivery_log_table)

    def destinations(destination_id: str | None, hours: int) -> list[dict[str, Any]] | None:
        sqs = client("sqs")
        known = queues_of(sqs, settings.destination_queue_prefix, deployed_destinations(settings.destination_types))
        if destination_id is not None and destination_id not in known:
            return None
        return [destination_status(sqs, log, queues, hours) for did, queues in known.items()
                if destination_id in (None, did)]

    return AdminApi(tokens.find, settings.space_id, store, DefinitionStore(ddb, settings.segments_table), specs,
                    memberships, lambda: backfill_status(ddb, settings.segments_table),
                    preview=lambda draft: previews.preview(draft, catalog.current()).as_dict(),
                    destinations=destinations)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = APIGatewayProxyEventV2(event)
    body = request.body
    if body is not None and request.is_base64_encoded:
        body = base64.b64decode(body).decode("utf-8", errors="replace")
    result = dependencies().handle(request.request_context.http.method, request.raw_path, body,
                                   (request.headers or {}).get("authorization"), dict(request.headers or {}),
                                   dict(request.query_string_parameters or {}))
    metrics.add_metric(name="AdminRequests", unit=MetricUnit.Count, value=1)
    # Never the token or the body: the settings are not secret, but the log has no need of them.
    logger.info("admin request", extra={"method": request.request_context.http.method, "status": result.status})
    return {"statusCode": result.status, "headers": {"Content-Type": "application/json", **result.headers},
            "body": json.dumps(result.body, separators=(",", ":"))}
