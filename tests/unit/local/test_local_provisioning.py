"""Local resources are built from cdp.resources and match the specs exactly.

Together with the infrastructure tests (the CDK template against the same specs),
this is what keeps the cloud and the local stack from drifting apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp import resources
from cdp.local.provisioning import provision
from cdp.local.stack import EmbeddedStack
from cdp.resources import TableSpec


@pytest.fixture
def session() -> Iterator[boto3.session.Session]:
    with mock_aws():
        yield boto3.session.Session(region_name="us-east-1")


def key_schema(partition: Any, sort: Any) -> list[dict[str, str]]:
    schema = [{"AttributeName": partition.name, "KeyType": "HASH"}]
    if sort:
        schema.append({"AttributeName": sort.name, "KeyType": "RANGE"})
    return schema


@pytest.mark.parametrize("spec", resources.TABLES, ids=lambda s: s.local_name)
def test_each_table_has_the_key_schema_indexes_ttl_and_stream_of_its_spec(
        session: boto3.session.Session, spec: TableSpec) -> None:
    provision(session)
    ddb = session.client("dynamodb")
    table = ddb.describe_table(TableName=spec.local_name)["Table"]

    assert table["KeySchema"] == key_schema(spec.partition_key, spec.sort_key)
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    assert types[spec.partition_key.name] == spec.partition_key.type
    if spec.sort_key:
        assert types[spec.sort_key.name] == spec.sort_key.type
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    indexes = {i["IndexName"]: i for i in table.get("GlobalSecondaryIndexes", [])}
    assert set(indexes) == {i.name for i in spec.indexes}
    for index in spec.indexes:
        assert indexes[index.name]["KeySchema"] == key_schema(index.partition_key, index.sort_key)
        assert types[index.partition_key.name] == index.partition_key.type
        assert indexes[index.name]["Projection"] == {"ProjectionType": "ALL"}
    ttl = ddb.describe_time_to_live(TableName=spec.local_name)["TimeToLiveDescription"]
    if spec.ttl_attribute:
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": spec.ttl_attribute}
    else:
        assert ttl["TimeToLiveStatus"] == "DISABLED"
    stream = table.get("StreamSpecification") or {"StreamEnabled": False}
    if spec.stream:
        assert stream == {"StreamEnabled": True, "StreamViewType": spec.stream}
    else:
        assert stream["StreamEnabled"] is False
    backups = ddb.describe_continuous_backups(TableName=spec.local_name)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_streams_buckets_and_queues_exist_with_the_asked_shards(session: boto3.session.Session) -> None:
    provisioned = provision(session, shards=3)

    kinesis = session.client("kinesis")
    for stream in resources.STREAMS:
        summary = kinesis.describe_stream_summary(StreamName=stream.local_name)["StreamDescriptionSummary"]
        assert summary["StreamStatus"] == "ACTIVE"
        assert summary["OpenShardCount"] == 3
        assert summary["RetentionPeriodHours"] == resources.EVENT_STREAM_RETENTION_HOURS
        assert provisioned.stream_arns[stream.local_name] == summary["StreamARN"]
    buckets = {b["Name"] for b in session.client("s3").list_buckets()["Buckets"]}
    assert {b.local_name for b in resources.BUCKETS} <= buckets
    sqs = session.client("sqs")
    for queue in resources.QUEUES:
        url = sqs.get_queue_url(QueueName=queue.local_name)["QueueUrl"]
        assert url == provisioned.queue_urls[queue.local_name]


def test_provisioning_twice_changes_nothing(session: boto3.session.Session) -> None:
    first = provision(session)
    second = provision(session)

    assert first == second
    names = session.client("dynamodb").list_tables()["TableNames"]
    assert sorted(names) == sorted(t.local_name for t in resources.TABLES)


def test_the_environment_names_every_resource_for_the_handlers() -> None:
    class StartedMoto:
        def get_host_and_port(self) -> tuple[str, int]:
            return ("127.0.0.1", 4599)

    stack = EmbeddedStack(aws_port=4599)
    stack._moto = StartedMoto()  # type: ignore[assignment]

    values = stack.environment()

    for table in resources.TABLES:
        assert values[table.env] == table.local_name
    for stream in resources.STREAMS:
        assert values[stream.env] == stream.local_name
    for bucket in resources.BUCKETS:
        assert values[bucket.env] == bucket.local_name
    for queue in resources.QUEUES:
        assert values[queue.env] == queue.local_name
    assert values["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4599"
    assert values["AWS_DEFAULT_REGION"] == "us-east-1"
    assert values["CDP_SPACE_ID"] == "default"
    # The token is stored as a hash in the sources table, never handed to the functions.
    assert "cdp-local-dev-token" not in values.values()
