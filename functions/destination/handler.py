"""Destination: one destination's queue -> its API (webhook, Slack, EventBridge, SQS, S3,
Meta, Google Ads, HubSpot).

Every destination has its own function of this code, its own role (only its secret,
bucket or bus) and its own queue; ``CDP_DESTINATION_ID`` says which destination it is.
``cdp.activation.worker.DestinationWorker`` reads the batch's profiles, sends, and
settles each message: delivered (deleted), retried later (reported, made visible again
after the retry policy's delay), or dead-lettered with its reason. The response lists
the retried and held messages (``ReportBatchItemFailures``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.activation.worker import DestinationWorker
from cdp.aws.destination_runtime import destination_worker
from cdp.config import get_settings
from cdp.observability import logger, metrics, tracer
from cdp.resources import destination_of_queue


def destination_id(records: list[dict[str, Any]]) -> str:
    """``CDP_DESTINATION_ID``, or (the local stack runs every destination in one process)
    the one whose queue the records come from."""
    settings = get_settings()
    if settings.destination_id:
        return settings.destination_id
    arn = str(records[0].get("eventSourceARN", "")) if records else ""
    return destination_of_queue(arn.rsplit(":", 1)[-1], settings.destination_queue_prefix)


@cache
def worker(destination: str) -> DestinationWorker:
    return destination_worker(get_settings(), destination)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    if not records:
        return {"batchItemFailures": []}
    current = worker(destination_id(records))
    result = current.handle(records)
    metrics.add_dimension(name="destination", value=current.config.id)
    for name, value in (("MessagesDelivered", result.delivered), ("MessagesRetried", result.retried),
                        ("MessagesDeadLettered", result.dead_lettered), ("MessagesHeld", result.held)):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    logger.info("batch delivered", extra={"destination": current.config.id, "records": len(records),
                                          "delivered": result.delivered, "retried": result.retried,
                                          "dead_lettered": result.dead_lettered, "held": result.held,
                                          "last_error": result.last_error or None,
                                          "not_sent": dict(current.refused)})
    return result.response()
