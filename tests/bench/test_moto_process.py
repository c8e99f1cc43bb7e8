"""bench.moto_process: the benchmark's moto server rolls back cancelled transactions as moto does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from bench.moto_process import MotoServerProcess


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    with MotoServerProcess() as moto:
        client = boto3.client(
            "dynamodb",
            endpoint_url=moto.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for name, keys in (("hash", ["pk"]), ("ranged", ["pk", "sk"])):
            client.create_table(
                TableName=name,
                KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in zip(keys, ("HASH", "RANGE"), strict=False)],
                AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
                BillingMode="PAY_PER_REQUEST",
            )
        yield client


def test_cancelled_transaction_leaves_every_item_as_it_was(dynamodb: Any):
    dynamodb.put_item(TableName="hash", Item={"pk": {"S": "p"}, "version": {"N": "1"}})
    dynamodb.put_item(TableName="ranged", Item={"pk": {"S": "h"}, "sk": {"S": "1"}, "v": {"S": "old"}})
    with pytest.raises(ClientError) as cancelled:
        dynamodb.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": "hash",
                        "Key": {"pk": {"S": "p"}},
                        "UpdateExpression": "SET version = :two",
                        "ExpressionAttributeValues": {":two": {"N": "2"}},
                    }
                },
                {"Put": {"TableName": "ranged", "Item": {"pk": {"S": "h"}, "sk": {"S": "1"}, "v": {"S": "new"}}}},
                {"Put": {"TableName": "hash", "Item": {"pk": {"S": "created"}}}},
                {
                    "Put": {
                        "TableName": "hash",
                        "Item": {"pk": {"S": "p2"}},
                        "ConditionExpression": "attribute_exists(pk)",  # fails: p2 is not there
                    }
                },
            ]
        )
    assert cancelled.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert dynamodb.get_item(TableName="hash", Key={"pk": {"S": "p"}})["Item"]["version"] == {"N": "1"}
    ranged = dynamodb.get_item(TableName="ranged", Key={"pk": {"S": "h"}, "sk": {"S": "1"}})["Item"]
    assert ranged["v"] == {"S": "old"}
    assert "Item" not in dynamodb.get_item(TableName="hash", Key={"pk": {"S": "created"}})


def test_committed_transaction_applies_every_item(dynamodb: Any):
    dynamodb.transact_write_items(
        TransactItems=[
            {
                "Put": {
                    "TableName": "hash",
                    "Item": {"pk": {"S": "a"}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {"Put": {"TableName": "ranged", "Item": {"pk": {"S": "a"}, "sk": {"S": "1"}}}},
        ]
    )
    assert dynamodb.get_item(TableName="hash", Key={"pk": {"S": "a"}})["Item"]
    assert dynamodb.get_item(TableName="ranged", Key={"pk": {"S": "a"}, "sk": {"S": "1"}})["Item"]
