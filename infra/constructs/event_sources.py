"""Stream event source mappings built from their specs in ``cdp.resources`` (the local
stack's emulated mappings read the same specs), each with its on-failure queue."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs

from cdp.resources import DynamoDbStreamEventSourceSpec, KinesisEventSourceSpec


def kinesis_event_source(stream: kinesis.IStream, spec: KinesisEventSourceSpec, on_failure: sqs.IQueue,
                         filters: Sequence[str] = ()) -> event_sources.KinesisEventSource:
    return event_sources.KinesisEventSource(
        stream,
        starting_position=lambda_.StartingPosition[spec.starting_position],
        batch_size=spec.batch_size,
        max_batching_window=Duration.seconds(spec.max_batching_window_s),
        bisect_batch_on_error=spec.bisect_batch_on_error,
        retry_attempts=spec.retry_attempts,
        max_record_age=Duration.seconds(spec.max_record_age_s),
        parallelization_factor=spec.parallelization_factor,
        report_batch_item_failures=spec.report_batch_item_failures,
        on_failure=event_sources.SqsDlq(on_failure),
        filters=[{"pattern": p} for p in filters] or None,
    )


def dynamo_event_source(table: dynamodb.ITable, spec: DynamoDbStreamEventSourceSpec, on_failure: sqs.IQueue,
                        filters: Sequence[str] | None = None) -> event_sources.DynamoEventSource:
    """``filters``: the mapping's patterns (default: the spec's own)."""
    patterns = spec.filter_patterns if filters is None else filters
    return event_sources.DynamoEventSource(
        table,
        starting_position=lambda_.StartingPosition[spec.starting_position],
        batch_size=spec.batch_size,
        max_batching_window=Duration.seconds(spec.max_batching_window_s),
        bisect_batch_on_error=spec.bisect_batch_on_error,
        retry_attempts=spec.retry_attempts,
        max_record_age=Duration.seconds(spec.max_record_age_s),
        parallelization_factor=spec.parallelization_factor,
        report_batch_item_failures=spec.report_batch_item_failures,
        on_failure=event_sources.SqsDlq(on_failure),
        filters=[{"pattern": p} for p in patterns] or None,
    )
