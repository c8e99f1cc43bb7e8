"""Activation router: memberships-table stream and event stream -> destination queues.

One function, two event source mappings: DynamoDB Streams records are membership
changes, Kinesis records are events (for trigger rules). The decisions and the sending
are ``cdp.activation.dispatch.ActivationRouter``'s. A failure to put the messages on a
queue fails the invocation: the mapping retries the batch (FIFO deduplication ids make
the resent messages no-ops), bisects it, and after its retries sends it to the router's
dead-letter queue.
"""

from __future__ import annotations

import base64
import binascii
import json
from functools import lru_cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.activation.destinations import load_destinations_file
from cdp.activation.dispatch import ActivationRouter, RoutingStats
from cdp.aws.activation_profiles import ActivationProfiles
from cdp.aws.clients import client
from cdp.aws.destination_queues import DestinationQueueSender
from cdp.config import get_settings
from cdp.observability import logger, metrics, tracer


@lru_cache(maxsize=1)
def router() -> ActivationRouter:
    settings = get_settings()
    ddb = client("dynamodb")
    return ActivationRouter(
        load_destinations_file(settings.destinations_file),
        DestinationQueueSender(client("sqs"), settings.destination_queue_prefix),
        ActivationProfiles(ddb, settings.identity_table, settings.events_table, settings.memberships_table),
    )


def _event_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The event of a Kinesis record in the collector's format (docs/record-format.md);
    None for rejected or unreadable records (the stream consumer quarantines those)."""
    try:
        data = json.loads(base64.b64decode(record["kinesis"]["data"]))
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    if not isinstance(data, dict) or data.get("kind") != "event" or not isinstance(data.get("event"), dict):
        return None
    return data["event"]


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    changes = [((r.get("dynamodb") or {}).get("OldImage"), (r.get("dynamodb") or {}).get("NewImage"))
               for r in records if r.get("eventSource") == "aws:dynamodb"]
    events = [e for r in records if r.get("eventSource") == "aws:kinesis" if (e := _event_of(r)) is not None]
    stats = RoutingStats()
    if changes:
        stats = router().route_changes(changes)
    if events:
        found = router().route_events(events)
        stats.inputs += found.inputs
        stats.events += found.events
        stats.messages += found.messages
        stats.skipped.update(found.skipped)
    for name, value in stats.as_metrics().items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    # Skip reasons name destinations and consent categories only, never a person.
    logger.info("batch routed", extra={"records": len(records), **stats.as_metrics(),
                                       "skipped": dict(stats.skipped)})
    return {"routed": stats.messages}
