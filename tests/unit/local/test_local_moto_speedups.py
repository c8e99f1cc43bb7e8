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


def _scan_all(client: Any, table: str, **request: Any) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    while True:
        page = client.scan(TableName=table, **request)
        keys.extend((i["pk"]["S"], i.get("sk", {}).get("S", "")) for i in page["Items"])
        if "LastEvaluatedKey" not in page:
            return keys
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_scans_and_queries_return_what_they_did_page_by_page_and_see_every_write() -> None:
    assert moto_speedups.apply()
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(TableName="r", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                       {"AttributeName": "sk", "KeyType": "RANGE"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                  {"AttributeName": "sk", "AttributeType": "S"}])
        expected = set()
        for p in range(40):
            for s in range(p % 4 + 1):
                client.put_item(TableName="r", Item={"pk": {"S": f"p{p:02d}"}, "sk": {"S": f"s{s}"}})
                expected.add((f"p{p:02d}", f"s{s}"))
        whole = _scan_all(client, "r", Limit=7)
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        assert "_cdp_sorted" in dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_table("r").__dict__
        assert sorted(whole) == sorted(expected) and len(whole) == len(expected)
        # Parallel segments: every item once, each partition whole and in sort-key order in one segment.
        parts = [_scan_all(client, "r", Limit=5, Segment=n, TotalSegments=3) for n in range(3)]
        assert sorted(k for part in parts for k in part) == sorted(expected)
        for part in parts:
            for pk in {k[0] for k in part}:
                run = [k for k in part if k[0] == pk]
                indexes = [part.index(k) for k in run]
                assert indexes == list(range(indexes[0], indexes[0] + len(run))) and run == sorted(run)
        # Writes between pages are seen (the sorted list is rebuilt).
        first = client.scan(TableName="r", Limit=10)
        client.put_item(TableName="r", Item={"pk": {"S": "p99"}, "sk": {"S": "s0"}})
        client.delete_item(TableName="r", Key={"pk": {"S": "p00"}, "sk": {"S": "s0"}})
        rest = _scan_all(client, "r", Limit=10, ExclusiveStartKey=first["LastEvaluatedKey"])
        assert ("p99", "s0") in rest
        assert sorted(_scan_all(client, "r")) == sorted(expected - {("p00", "s0")} | {("p99", "s0")})
        page = client.query(TableName="r", KeyConditionExpression="pk = :p",
                            ExpressionAttributeValues={":p": {"S": "p03"}})
        assert [i["sk"]["S"] for i in page["Items"]] == ["s0", "s1", "s2", "s3"]
        assert client.query(TableName="r", KeyConditionExpression="pk = :p",
                            ExpressionAttributeValues={":p": {"S": "nobody"}})["Items"] == []


def test_item_responses_are_the_json_moto_s_serializer_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.responses import DynamoResult

    assert moto_speedups.apply()
    original = DynamoResult._cdp_original_execute_result  # type: ignore[attr-defined]
    fast = DynamoResult.execute_result
    compared: list[str] = []

    def both(self: Any, context: Any) -> Any:
        expected, actual = original(self, context), fast(self, context)
        assert actual[:2] == expected[:2] and json.loads(actual[2]) == json.loads(expected[2])
        compared.append(context.operation_model.name)
        return actual

    monkeypatch.setattr(DynamoResult, "execute_result", both)
    with mock_aws():
        c = boto3.client("dynamodb")
        c.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                       KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                       AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
        item = {"pk": {"S": "a"}, "b": {"B": b"\x00\x01binary"}, "n": {"N": "1.5"}, "bs": {"BS": [b"q"]},
                "m": {"M": {"x": {"L": [{"S": "y"}, {"BOOL": True}, {"NULL": True}]}}}, "ss": {"SS": ["a", "b"]}}
        c.put_item(TableName="t", Item=item, ReturnConsumedCapacity="TOTAL")
        assert c.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"] == item
        c.update_item(TableName="t", Key={"pk": {"S": "a"}}, UpdateExpression="SET z = :z",
                      ExpressionAttributeValues={":z": {"S": "1"}}, ReturnValues="ALL_NEW")
        c.scan(TableName="t", Limit=1)
        c.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "a"}})
        c.batch_get_item(RequestItems={"t": {"Keys": [{"pk": {"S": "a"}}, {"pk": {"S": "zz"}}]}})
        c.put_item(TableName="t", Item={"pk": {"S": "c"}})
        c.delete_item(TableName="t", Key={"pk": {"S": "c"}}, ReturnValues="ALL_OLD")
    assert set(compared) >= {"PutItem", "GetItem", "UpdateItem", "Scan", "Query", "BatchGetItem", "DeleteItem"}
