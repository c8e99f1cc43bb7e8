"""Create the CDP's tables, streams, buckets and queues from ``cdp.resources``.

The CDK constructs build the same resources from the same specs; this is the local
half. Every step is idempotent: running it against an already provisioned endpoint
changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from cdp import resources
from cdp.resources import BucketSpec, GlobalIndex, Key, QueueSpec, StreamSpec, TableSpec

log = logging.getLogger(__name__)


def _key_schema(partition: Key, sort: Key | None) -> list[dict[str, str]]:
    schema = [{"AttributeName": partition.name, "KeyType": "HASH"}]
    if sort is not None:
        schema.append({"AttributeName": sort.name, "KeyType": "RANGE"})
    return schema


def _attribute_definitions(spec: TableSpec) -> list[dict[str, str]]:
    keys: list[Key] = [spec.partition_key]
    if spec.sort_key:
        keys.append(spec.sort_key)
    for index in spec.indexes:
        keys.append(index.partition_key)
        if index.sort_key:
            keys.append(index.sort_key)
    seen: dict[str, str] = {}
    for key in keys:
        if seen.setdefault(key.name, key.type) != key.type:
            raise ValueError(f"{spec.local_name}: attribute {key.name} declared as two types")
    return [{"AttributeName": name, "AttributeType": kind} for name, kind in seen.items()]


def _global_index(index: GlobalIndex) -> dict[str, Any]:
    return {
        "IndexName": index.name,
        "KeySchema": _key_schema(index.partition_key, index.sort_key),
        "Projection": {"ProjectionType": "ALL"},
    }


def create_table_request(spec: TableSpec) -> dict[str, Any]:
    """The CreateTable request of a table spec: on-demand, encrypted, stream if asked."""
    request: dict[str, Any] = {
        "TableName": spec.local_name,
        "KeySchema": _key_schema(spec.partition_key, spec.sort_key),
        "AttributeDefinitions": _attribute_definitions(spec),
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
    }
    if spec.indexes:
        request["GlobalSecondaryIndexes"] = [_global_index(index) for index in spec.indexes]
    if spec.stream:
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": spec.stream}
    return request


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def ensure_table(dynamodb: Any, spec: TableSpec) -> None:
    try:
        dynamodb.create_table(**create_table_request(spec))
        log.info("created table %s", spec.local_name)
    except ClientError as exc:
        if _error_code(exc) != "ResourceInUseException":
            raise
    dynamodb.get_waiter("table_exists").wait(TableName=spec.local_name,
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    if spec.ttl_attribute:
        current = dynamodb.describe_time_to_live(TableName=spec.local_name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            dynamodb.update_time_to_live(
                TableName=spec.local_name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
            )
    dynamodb.update_continuous_backups(
        TableName=spec.local_name,
        PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
    )


def ensure_stream(kinesis: Any, spec: StreamSpec, shards: int = 1,
                  retention_hours: int = resources.EVENT_STREAM_RETENTION_HOURS) -> str:
    """Create the stream (``shards`` shards) and wait until it is ACTIVE; returns its ARN."""
    try:
        kinesis.create_stream(StreamName=spec.local_name, ShardCount=shards)
        log.info("created stream %s with %d shard(s)", spec.local_name, shards)
    except ClientError as exc:
        if _error_code(exc) != "ResourceInUseException":
            raise
    kinesis.get_waiter("stream_exists").wait(StreamName=spec.local_name,
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    summary = kinesis.describe_stream_summary(StreamName=spec.local_name)["StreamDescriptionSummary"]
    if summary["RetentionPeriodHours"] < retention_hours:
        kinesis.increase_stream_retention_period(StreamName=spec.local_name,
                                                 RetentionPeriodHours=retention_hours)
    return str(summary["StreamARN"])


def ensure_bucket(s3: Any, spec: BucketSpec) -> None:
    try:
        s3.create_bucket(Bucket=spec.local_name)
        log.info("created bucket %s", spec.local_name)
    except ClientError as exc:
        if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3.put_public_access_block(Bucket=spec.local_name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True,
        "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
    })


def ensure_queue(sqs: Any, spec: QueueSpec) -> str:
    """Create the queue (14 days' retention, like a dead-letter queue should have); returns its URL."""
    response = sqs.create_queue(QueueName=spec.local_name,
                                Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)})
    return str(response["QueueUrl"])


@dataclass(frozen=True)
class Provisioned:
    stream_arns: dict[str, str]
    queue_urls: dict[str, str]


def provision(
    session: Any,
    *,
    tables: Iterable[TableSpec] = resources.TABLES,
    streams: Iterable[StreamSpec] = resources.STREAMS,
    buckets: Iterable[BucketSpec] = resources.BUCKETS,
    queues: Iterable[QueueSpec] = resources.QUEUES,
    shards: int = 1,
) -> Provisioned:
    """Create every resource of ``cdp.resources`` through ``session`` (a boto3 Session)."""
    dynamodb = session.client("dynamodb")
    for table in tables:
        ensure_table(dynamodb, table)
    kinesis = session.client("kinesis")
    stream_arns = {stream.local_name: ensure_stream(kinesis, stream, shards) for stream in streams}
    s3 = session.client("s3")
    for bucket in buckets:
        ensure_bucket(s3, bucket)
    sqs = session.client("sqs")
    queue_urls = {queue.local_name: ensure_queue(sqs, queue) for queue in queues}
    return Provisioned(stream_arns=stream_arns, queue_urls=queue_urls)
