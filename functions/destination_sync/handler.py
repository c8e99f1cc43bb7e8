"""Destination sync: a destination's scheduled batch sync (EventBridge rule, input
``{"destination_id": ...}``), with the destination's own role.

``cdp.activation.sync_job.sync_destination`` syncs each of the destination's audiences
while the invocation has time; when its deadline stops a sync, the function invokes
itself (asynchronously, same input, the audiences still to do) to continue from the
checkpoint, so a sync longer than 15 minutes needs no schedule tick to go on.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.activation.destinations import S3Settings
from cdp.activation.sync import BatchSync
from cdp.activation.sync_job import sync_destination
from cdp.activation.worker import DestinationWorker
from cdp.aws.clients import client
from cdp.aws.delivery_log import DeliveryLog
from cdp.aws.destination_runtime import destination_worker
from cdp.aws.full_export import write_full_export
from cdp.aws.sync_store import DynamoMembers, batch_sync
from cdp.config import get_settings
from cdp.observability import logger, metrics, tracer


@cache
def parts(destination_id: str) -> tuple[DestinationWorker, BatchSync]:
    settings = get_settings()
    return (destination_worker(settings, destination_id),
            batch_sync(client("dynamodb"), client("s3"), settings.memberships_table, settings.segments_table,
                       settings.sync_snapshot_bucket))


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    destination_id = str(event["destination_id"])
    worker, sync = parts(destination_id)
    audiences = event.get("audiences")

    def deadline() -> float:
        return context.get_remaining_time_in_millis() / 1000

    full_export = None
    settings = worker.config.settings
    if isinstance(settings, S3Settings) and settings.full_export:
        members = DynamoMembers(client("dynamodb"), get_settings().memberships_table)

        def full_export(audience_id: str, sync_id: str) -> dict[str, Any]:
            written = write_full_export(worker, client("s3"), members, audience_id, sync_id, deadline)
            return {"key": written.key, "rows": written.rows, "bytes": written.bytes}

    outcome = sync_destination(worker.config, sync, worker.send_messages, deadline,
                               list(audiences) if isinstance(audiences, list) else None, full_export)
    summary = outcome.summary()
    if outcome.continue_now:
        remaining = outcome.not_started + [aid for aid, r in outcome.results.items()
                                           if r.outcome == "stopped" and r.reason == "deadline"]
        client("lambda").invoke(FunctionName=context.invoked_function_arn, InvocationType="Event",
                                Payload=json.dumps({"destination_id": destination_id, "audiences": remaining}))
    metrics.add_dimension(name="destination", value=destination_id)
    log = DeliveryLog(client("dynamodb"), get_settings().delivery_log_table)
    for audience_id, result in outcome.results.items():
        counts = result.counts.as_dict()
        log.record_sync(destination_id, audience_id, result.outcome, result.sync_id, result.reason, counts)
        metrics.add_metric(name="SyncAdds", unit=MetricUnit.Count, value=counts.get("adds", 0))
        metrics.add_metric(name="SyncRemoves", unit=MetricUnit.Count, value=counts.get("removes", 0))
        logger.info("audience synced", extra={"destination": destination_id, "audience": audience_id,
                                              "outcome": result.outcome, "reason": result.reason, **counts})
    return summary
