"""Stream consumer: Kinesis event source mapping -> history (dedupes), archive, unify.

Powertools' BatchProcessor decodes each record and builds the partial batch
response; the batch-wide work (one claim transaction, one S3 object, batched
writes) runs in ``cdp.pipeline.StreamConsumer`` between the two.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from cdp.aws.archive import S3Archive
from cdp.aws.clients import client
from cdp.aws.event_store import HistoryStore
from cdp.aws.identity_config_store import IdentityConfigStore
from cdp.aws.identity_graph import DynamoIdentityGraph
from cdp.aws.profile_store import ProfileRecords
from cdp.aws.quarantine_store import QuarantineStore
from cdp.config import get_settings, identity_config
from cdp.observability import logger, metrics, tracer
from cdp.pipeline import InboundRecord, StreamConsumer
from cdp.segmentation.catalog import CatalogStore
from cdp.unification import UnificationStage

processor = BatchProcessor(event_type=EventType.KinesisDataStreams)


class RecordNotProcessed(Exception):
    """Reported to Lambda as a batch item failure; the record will be retried."""


@lru_cache(maxsize=1)
def unification() -> tuple[UnificationStage, DynamoIdentityGraph]:
    settings = get_settings()
    ddb = client("dynamodb")
    identity = IdentityConfigStore(ddb, settings.identity_table, identity_config(settings),
                                   cache_seconds=settings.identity_config_cache_seconds)
    graph = DynamoIdentityGraph(ddb, settings.identity_table, identity.current(), records_table=settings.events_table)
    catalog = CatalogStore(ddb, settings.segments_table, cache_seconds=settings.segments_cache_seconds)
    return UnificationStage(graph, ProfileRecords(ddb, settings.events_table), identity.current,
                            catalog.current), graph


@lru_cache(maxsize=1)
def consumer() -> StreamConsumer:
    settings = get_settings()
    ddb = client("dynamodb")
    return StreamConsumer(
        history=HistoryStore(ddb, settings.events_table, settings.event_retention_days),
        archive=S3Archive(client("s3"), settings.archive_bucket),
        stages=[unification()[0]],
        quarantine=QuarantineStore(ddb, settings.quarantine_table, settings.quarantine_retention_days),
    )


def _identity_counters() -> dict[str, int]:
    stage, graph = unification()
    return {"ProfilesMerged": graph.merges, "MergesBlocked": stage.stats.blocked,
            "GraphRetries": graph.retries, "BatchConflicts": stage.stats.batch_conflicts}


def to_inbound(record: KinesisStreamRecord) -> InboundRecord:
    return InboundRecord(
        shard_id=record.event_id.split(":", 1)[0],
        sequence_number=record.kinesis.sequence_number,
        arrival=float(record.kinesis.approximate_arrival_timestamp),
        data=record.kinesis.data_as_bytes(),
        partition_key=record.kinesis.partition_key,
    )


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    inbound: list[InboundRecord] = []

    def decode(record: KinesisStreamRecord) -> None:
        inbound.append(to_inbound(record))

    before = _identity_counters()
    with processor(records=event["Records"], handler=decode, lambda_context=context):
        processor.process()
        outcome = consumer().process(inbound)
        by_owner = {f"{r.event_id.split(':', 1)[0]}:{r.kinesis.sequence_number}": r
                    for r in (KinesisStreamRecord(raw) for raw in event["Records"])}
        for owner, why in outcome.failed.items():
            error = RecordNotProcessed(why)
            processor.failure_handler(by_owner[owner], (RecordNotProcessed, error, None))
    metrics.add_metric(name="EventsStored", unit=MetricUnit.Count, value=outcome.stored)
    metrics.add_metric(name="DuplicatesSkipped", unit=MetricUnit.Count, value=outcome.duplicates)
    metrics.add_metric(name="EventsQuarantined", unit=MetricUnit.Count, value=outcome.quarantined)
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=len(outcome.failed))
    # Identity resolution in this batch (counters of the warm function's graph, as deltas).
    for name, value in _identity_counters().items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value - before[name])
    logger.info("batch processed", extra={"records": len(inbound), "stored": outcome.stored,
                                          "duplicates": outcome.duplicates,
                                          "quarantined": outcome.quarantined, "failed": len(outcome.failed)})
    return processor.response()
