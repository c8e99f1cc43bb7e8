"""The moto fixes of the local stack keep moto's behaviour (transaction rollback, dispatch)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from cdp.local import moto_speedups


@pytest.fixture
def ddb() -> Iterator[Any]:
    assert moto_speedups.apply()
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        client.put_item(TableName="t", Item={"pk": {"S": "taken"}})
        yield client


def keys(client: Any) -> set[str]:
    return {item["pk"]["S"] for item in client.scan(TableName="t")["Items"]}


def put(key: str) -> dict[str, Any]:
    return {"Put": {"TableName": "t", "Item": {"pk": {"S": key}},
                    "ConditionExpression": "attribute_not_exists(pk)"}}


def test_a_committed_transaction_writes_every_item(ddb: Any) -> None:
    ddb.transact_write_items(TransactItems=[put(f"k{i}") for i in range(100)])

    assert keys(ddb) == {"taken"} | {f"k{i}" for i in range(100)}


def test_a_cancelled_transaction_is_rolled_back_entirely(ddb: Any) -> None:
    with pytest.raises(ClientError) as raised:
        ddb.transact_write_items(TransactItems=[put("new-1"), put("taken"), put("new-2")])

    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert keys(ddb) == {"taken"}


def test_within_a_transaction_a_table_is_snapshotted_once() -> None:
    snapshots = moto_speedups._SnapshotOncePerTransaction()
    table = {"items": [1, 2, 3]}

    snapshots.begin()
    first, second = snapshots.deepcopy(table), snapshots.deepcopy(table)
    snapshots.end()
    outside = snapshots.deepcopy(table)

    assert first is second and first == table and first is not table
    assert outside is not first


def test_the_server_dispatches_every_service_as_before_with_its_lookups_cached() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.server import create_backend_app
    from werkzeug.test import Client

    assert moto_speedups.apply()
    app = DomainDispatcherApplication(create_backend_app)
    client = Client(app)
    auth = "AWS4-HMAC-SHA256 Credential=t/20261206/us-east-1/{}/aws4_request, SignedHeaders=host, Signature=0"
    for _ in range(2):  # the second round is answered from the caches
        tables = client.post("/", headers={"Host": "dynamodb.us-east-1.amazonaws.com",
                                           "Authorization": auth.format("dynamodb"),
                                           "X-Amz-Target": "DynamoDB_20120810.ListTables",
                                           "Content-Type": "application/x-amz-json-1.0"}, data="{}")
        streams = client.post("/", headers={"Host": "kinesis.us-east-1.amazonaws.com",
                                            "Authorization": auth.format("kinesis"),
                                            "X-Amz-Target": "Kinesis_20131202.ListStreams",
                                            "Content-Type": "application/x-amz-json-1.1"}, data="{}")
        assert tables.status_code == 200 and "TableNames" in json.loads(tables.get_data())
        assert streams.status_code == 200 and "StreamNames" in json.loads(streams.get_data())
    assert app.get_backend_for_host("dynamodb.us-east-1.amazonaws.com") == "dynamodb"
    assert app.get_backend_for_host("kinesis.us-east-1.amazonaws.com") == "kinesis"
