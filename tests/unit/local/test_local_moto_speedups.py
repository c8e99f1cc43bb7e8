"""The moto DynamoDB transaction fix keeps moto's rollback behaviour."""

from __future__ import annotations

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
