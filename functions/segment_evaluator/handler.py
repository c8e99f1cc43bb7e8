"""Segment evaluator: identity-table stream (profile items only) -> memberships + audience events.

Powertools' BatchProcessor runs ``cdp.segmentation.evaluator.SegmentEvaluator`` on each
record and reports the ones that raised as batch item failures (the mapping retries
from the first of them, then bisects, then sends the rest to the DLQ). After a record
fails, the later records of the batch fail too without being evaluated: the mapping
delivers them again after the failed one, so a profile's changes are always decided in
stream order. The memberships decided for the records before it, buffered in memory,
are written together at the end (``SegmentEvaluator.flush``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.aws.account_traits import AccountTraits
from cdp.aws.clients import client
from cdp.aws.event_stream import KinesisEventStream
from cdp.aws.membership_store import MembershipStore
from cdp.aws.profile_items import ProfileItems
from cdp.config import get_settings
from cdp.observability import logger, metrics, tracer
from cdp.segmentation.catalog import CatalogStore
from cdp.segmentation.evaluator import SegmentEvaluator

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@lru_cache(maxsize=1)
def dependencies() -> SegmentEvaluator:
    settings = get_settings()
    ddb = client("dynamodb")
    catalog = CatalogStore(ddb, settings.segments_table, cache_seconds=settings.segments_cache_seconds)
    accounts = AccountTraits(ddb, settings.events_table, settings.identity_table)
    profiles = ProfileItems(ddb, settings.identity_table)
    return SegmentEvaluator(
        catalog=catalog.current,
        # Buffered, unconditional batch writes: safe because this function is the ordered
        # reader of each profile's changes (see cdp.aws.membership_store).
        memberships=MembershipStore(ddb, settings.memberships_table, buffered=True),
        accounts=accounts.of_groups,
        events=KinesisEventStream(client("kinesis"), settings.event_stream),
        defer_events=True,
        touch_members=lambda group_id: sum(profiles.touch(pid, {"accounts": group_id})
                                           for pid in profiles.live_items(accounts.member_ids(group_id))),
    )


class EarlierRecordFailed(RuntimeError):
    """A record of the batch before this one failed: this one waits for its redelivery."""


class _Batch:
    failed = False  # a record of the current invocation's batch has failed


def evaluate_record(record: DynamoDBRecord) -> None:
    if _Batch.failed:
        raise EarlierRecordFailed("an earlier record of the batch failed; retried after it")
    # The images as DynamoDB JSON (the domain reads attribute values, like GetItem returns).
    images = record.raw_event.get("dynamodb", {})
    try:
        dependencies().process(images.get("OldImage"), images.get("NewImage"))
    except Exception:
        _Batch.failed = True
        raise


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    evaluator = dependencies()
    before = evaluator.stats.as_metrics()
    evaluator.discard()
    _Batch.failed = False
    # The memberships the batch's changes touch, read together (a failure fails the invocation).
    evaluator.prefetch([((r.get("dynamodb") or {}).get("OldImage"), (r.get("dynamodb") or {}).get("NewImage"))
                        for r in event.get("Records", [])])
    response = process_partial_response(event=event, record_handler=evaluate_record, processor=processor,
                                         context=context)
    try:
        # The batch's memberships (BatchWriteItem), then its Audience Entered/Exited events.
        evaluator.flush()
    except Exception:
        # The invocation fails, so Lambda retries the whole batch: what was stored is read
        # again, and every record replays its stored transitions as the same events (same
        # messageIds), so none is lost and none counted twice.
        logger.exception("memberships or audience events not written; the batch is retried")
        evaluator.discard()
        raise
    after = evaluator.stats.as_metrics()
    for name, value in after.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value - before[name])
    failed = len(response.get("batchItemFailures", []))
    metrics.add_metric(name="ProfileChangesFailed", unit=MetricUnit.Count, value=failed)
    logger.info("batch evaluated", extra={"records": len(event.get("Records", [])), "failed": failed,
                                          **{k: after[k] - before[k] for k in after}})
    return response
