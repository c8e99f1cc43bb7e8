"""bench.aws_meter: DynamoDB request units by DynamoDB's published rules (on-demand).

Each test sends the request body a botocore client would serialise (DynamoDB JSON)
to ``DynamoCapacity.request`` and checks the units against the rule it names; the
last tests run real boto3 calls against moto with the meter's hooks attached.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from bench.aws_meter import AwsMeter, DynamoCapacity, item_kind, item_size, number_size
from cdp.resources import GlobalIndex, Key, TableSpec

PHASE = "consumer"
TABLE = TableSpec(logical_id="T", local_name="t", env="T", partition_key=Key("pk"))
SORTED = TableSpec(logical_id="S", local_name="s", env="S", partition_key=Key("pk"), sort_key=Key("sk"))
INDEXED = TableSpec(
    logical_id="I", local_name="i", env="I", partition_key=Key("pk"), indexes=(GlobalIndex("by_owner", Key("owner")),)
)


def s(value: str) -> dict[str, str]:
    return {"S": value}


def item_of(pk: str, size: int, **extra: Any) -> dict[str, Any]:
    """An item of exactly ``size`` bytes: ``pk`` (2 + len) plus ``filler`` padding (6 + len)."""
    item: dict[str, Any] = {"pk": s(pk), **extra}
    pad = size - item_size(item) - len("filler")
    assert pad >= 0
    item["filler"] = s("x" * pad)
    assert item_size(item) == size
    return item


def capacity() -> DynamoCapacity:
    return DynamoCapacity([TABLE, SORTED, INDEXED])


def units(tallies: dict[tuple[str, str, str], Any], table: str, operation: str) -> float:
    return float(tallies[(PHASE, table, operation)].units)


# --- item size -------------------------------------------------------------------------


def test_item_size_is_name_lengths_plus_value_sizes():
    assert item_size({"pk": s("abc")}) == 2 + 3
    assert item_size({"n": {"N": "12345"}}) == 1 + 4  # 5 digits: 3 bytes + 1
    assert item_size({"m": {"M": {"a": s("xy")}}}) == 1 + 3 + (1 + 2 + 1)
    assert item_size({"l": {"L": [s("a"), {"BOOL": True}]}}) == 1 + 3 + (1 + 1) + (1 + 1)
    assert item_size({"ss": {"SS": ["ab", "cde"]}}) == 2 + 5
    assert item_size({"é": s("ü")}) == 2 + 2  # UTF-8 bytes, names too


def test_number_size_counts_significant_digits():
    assert number_size("0") == 2
    assert number_size("-1200") == 2  # "12": 1 byte + 1
    assert number_size("3.14159") == 4  # 6 digits: 3 + 1


# --- writes ----------------------------------------------------------------------------


def test_put_costs_one_unit_per_started_kilobyte():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 1024)}, 200, None)
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("b", 1025)}, 200, None)
    assert units(ddb.writes, "t", "PutItem") == 1 + 2


def test_put_over_a_larger_item_costs_the_larger_item():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 3000)}, 200, None)
    ddb.writes.clear()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 100)}, 200, None)
    assert units(ddb.writes, "t", "PutItem") == 3


def test_refused_conditional_put_is_billed_and_changes_nothing():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 100)}, 200, None)
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 2500)}, 400, None)
    tally = ddb.writes[(PHASE, "t", "PutItem")]
    assert tally.units == 1 + 3 and tally.refused == 1
    ddb.writes.clear()
    ddb.request(PHASE, "DeleteItem", {"TableName": "t", "Key": {"pk": s("a")}}, 200, None)
    assert units(ddb.writes, "t", "DeleteItem") == 1  # the stored item is still the 100-byte one


def test_update_costs_the_larger_of_the_item_before_and_after():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 2100, version={"N": "1"})}, 200, None)
    small_change = {
        "TableName": "t",
        "Key": {"pk": s("a")},
        "UpdateExpression": "SET version = version + :one",
        "ExpressionAttributeValues": {":one": {"N": "1"}},
    }
    ddb.request(PHASE, "UpdateItem", small_change, 200, None)
    assert units(ddb.writes, "t", "UpdateItem") == 3  # one number changed, the item is 2.1 KB
    shrink = {"TableName": "t", "Key": {"pk": s("a")}, "UpdateExpression": "REMOVE filler"}
    ddb.request(PHASE, "UpdateItem", shrink, 200, None)
    assert units(ddb.writes, "t", "UpdateItem") == 3 + 3  # before: 2.1 KB
    ddb.request(PHASE, "UpdateItem", small_change, 200, None)
    assert units(ddb.writes, "t", "UpdateItem") == 3 + 3 + 1  # now small
    (stored,) = ddb.stored_items("t")
    assert stored == {"pk": s("a"), "version": {"N": "3"}}


def test_update_that_grows_an_item_costs_the_item_after():
    ddb = capacity()
    grow = {
        "TableName": "t",
        "Key": {"pk": s("new")},
        "UpdateExpression": "SET #st = :state, ids = list_append(if_not_exists(ids, :empty), :ids)",
        "ExpressionAttributeNames": {"#st": "state"},
        "ExpressionAttributeValues": {":state": s("x" * 1500), ":empty": {"L": []}, ":ids": {"L": [s("a")]}},
    }
    ddb.request(PHASE, "UpdateItem", grow, 200, None)  # creates the item, as DynamoDB does
    assert units(ddb.writes, "t", "UpdateItem") == 2
    (stored,) = ddb.stored_items("t")
    assert stored["ids"] == {"L": [s("a")]} and stored["state"] == s("x" * 1500)


def test_refused_conditional_update_is_billed_and_changes_nothing():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 50, version={"N": "1"})}, 200, None)
    bump = {
        "TableName": "t",
        "Key": {"pk": s("a")},
        "UpdateExpression": "SET version = :two",
        "ConditionExpression": "version = :zero",
        "ExpressionAttributeValues": {":two": {"N": "2"}, ":zero": {"N": "0"}},
    }
    ddb.request(PHASE, "UpdateItem", bump, 400, None)
    tally = ddb.writes[(PHASE, "t", "UpdateItem")]
    assert tally.units == 1 and tally.refused == 1
    (stored,) = ddb.stored_items("t")
    assert stored["version"] == {"N": "1"}


def test_batch_write_counts_each_item_alone_and_skips_unprocessed_ones():
    ddb = capacity()
    puts = [{"PutRequest": {"Item": item_of(f"k{i}", 1500)}} for i in range(3)]
    response = {"UnprocessedItems": {"t": [puts[2]]}}
    ddb.request(PHASE, "BatchWriteItem", {"RequestItems": {"t": puts}}, 200, response)
    tally = ddb.writes[(PHASE, "t", "BatchWriteItem")]
    assert (tally.units, tally.items, tally.calls) == (4, 2, 1)


def test_transaction_costs_two_units_per_kilobyte_per_item_even_when_cancelled():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("p", 1100, version={"N": "1"})}, 200, None)
    ddb.writes.clear()
    transaction = {
        "TransactItems": [
            {"Put": {"TableName": "t", "Item": item_of("new", 200), "ConditionExpression": "attribute_not_exists(pk)"}},
            {
                "Update": {
                    "TableName": "t",
                    "Key": {"pk": s("p")},
                    "UpdateExpression": "SET version = version + :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            },
            {
                "ConditionCheck": {
                    "TableName": "t",
                    "Key": {"pk": s("p2")},
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
        ]
    }
    ddb.request(PHASE, "TransactWriteItems", transaction, 400, None)  # cancelled
    tally = ddb.writes[(PHASE, "t", "TransactWriteItems")]
    assert tally.units == 2 * 1 + 2 * 2 + 2 * 1 and tally.refused == 3
    assert {i["pk"]["S"] for i in ddb.stored_items("t")} == {"p"}  # nothing applied
    ddb.request(PHASE, "TransactWriteItems", transaction, 200, None)
    assert {i["pk"]["S"] for i in ddb.stored_items("t")} == {"p", "new"}
    assert not ddb.unsupported


def test_each_index_receiving_the_item_costs_its_own_write():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "i", "Item": item_of("a", 500, owner=s("o1"))}, 200, None)
    assert units(ddb.writes, "i", "PutItem") == 1 + 1
    move = {
        "TableName": "i",
        "Key": {"pk": s("a")},
        "UpdateExpression": "SET #o = :o",
        "ExpressionAttributeNames": {"#o": "owner"},
        "ExpressionAttributeValues": {":o": s("o2")},
    }
    ddb.request(PHASE, "UpdateItem", move, 200, None)
    assert units(ddb.writes, "i", "UpdateItem") == 1 + 1 + 1  # table, index put, index delete


def test_unknown_update_expression_is_reported_not_guessed_silently():
    ddb = capacity()
    broken = {"TableName": "t", "Key": {"pk": s("a")}, "UpdateExpression": "SET = nonsense"}
    ddb.request(PHASE, "UpdateItem", broken, 200, None)
    assert units(ddb.writes, "t", "UpdateItem") == 1
    assert any("UpdateItem" in reason for reason in ddb.unsupported)


# --- reads -----------------------------------------------------------------------------


def test_get_item_rounds_up_to_4_kb_and_eventual_consistency_halves_it():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 4097)}, 200, None)
    ddb.request(PHASE, "GetItem", {"TableName": "t", "Key": {"pk": s("a")}, "ConsistentRead": True}, 200, {})
    ddb.request(PHASE, "GetItem", {"TableName": "t", "Key": {"pk": s("a")}}, 200, {})
    ddb.request(PHASE, "GetItem", {"TableName": "t", "Key": {"pk": s("missing")}}, 200, {})
    assert units(ddb.reads, "t", "GetItem") == 2 + 1 + 0.5


def test_batch_get_rounds_each_item_and_skips_unprocessed_keys():
    ddb = capacity()
    for pk in ("a", "b", "c"):
        ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of(pk, 100)}, 200, None)
    keys = [{"pk": s(pk)} for pk in ("a", "b", "c", "missing")]
    response = {"Responses": {"t": []}, "UnprocessedKeys": {"t": {"Keys": [{"pk": s("c")}]}}}
    ddb.request(PHASE, "BatchGetItem", {"RequestItems": {"t": {"Keys": keys, "ConsistentRead": True}}}, 200, response)
    ddb.request(PHASE, "BatchGetItem", {"RequestItems": {"t": {"Keys": keys[:2]}}}, 200, {"Responses": {"t": []}})
    tally = ddb.reads[(PHASE, "t", "BatchGetItem")]
    # Three 100-byte items (a, b, missing) at 1 unit each, consistent; then two at 0.5.
    assert (tally.units, tally.items, tally.calls) == (3 + 1, 5, 2)


def test_query_rounds_up_the_total_size_once():
    ddb = capacity()
    items = [{"pk": s("p"), "sk": s(f"{i:02d}"), "filler": s("x" * 1000)} for i in range(5)]
    for item in items:
        ddb.request(PHASE, "PutItem", {"TableName": "s", "Item": item}, 200, None)
    query = {"TableName": "s", "KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": s("p")}}
    ddb.request(PHASE, "Query", query, 200, {"Items": items})  # 5 x 1,013 B = 5,065 B: 2 units, not 5
    assert units(ddb.reads, "s", "Query") == 2 * 0.5
    ddb.request(PHASE, "Query", {**query, "FilterExpression": "filler = :b"}, 200, {"Items": []})
    assert any("filter" in reason for reason in ddb.unsupported)


def test_transactional_reads_cost_double():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("a", 5000)}, 200, None)
    body = {"TransactItems": [{"Get": {"TableName": "t", "Key": {"pk": s("a")}}}]}
    ddb.request(PHASE, "TransactGetItems", body, 200, {"Responses": [{"Item": {}}]})
    assert units(ddb.reads, "t", "TransactGetItems") == 2 * 2


# --- by kind of item ----------------------------------------------------------------------


def test_item_kind_names_the_key_prefixes():
    assert item_kind({"pk": s("ident#email:a@b.c")}, ("pk", None)) == "ident#"
    assert item_kind({"pk": s("p#123"), "sk": s("merge#456")}, ("pk", "sk")) == "p#merge#"
    assert item_kind({"pk": s("u#ana"), "sk": s("2026-11-28T12:00:00Z#m1")}, ("pk", "sk")) == "u#"
    assert item_kind({"pk": s("src_bench#m1")}, ("pk", None)) == "*"


def test_units_are_also_split_by_kind_of_item():
    ddb = capacity()
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("prof#1", 1500)}, 200, None)
    ddb.request(PHASE, "PutItem", {"TableName": "t", "Item": item_of("ident#x", 100)}, 200, None)
    keys = [{"pk": s("prof#1")}, {"pk": s("ident#x")}, {"pk": s("ident#y")}]
    ddb.request(PHASE, "BatchGetItem", {"RequestItems": {"t": {"Keys": keys}}}, 200, {"Responses": {"t": []}})
    assert ddb.write_kinds[(PHASE, "t", "PutItem", "prof#")].units == 2
    assert ddb.write_kinds[(PHASE, "t", "PutItem", "ident#")].units == 1
    assert ddb.read_kinds[(PHASE, "t", "BatchGetItem", "ident#")].items == 2


# --- the hooks, on real boto3 calls against moto ---------------------------------------


@pytest.fixture
def metered_dynamodb() -> Any:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        meter = AwsMeter([TABLE])
        meter.attach(client)
        meter.phase = PHASE
        yield client, meter


def test_hooks_meter_what_boto3_sends_including_refused_conditions(metered_dynamodb: Any):
    client, meter = metered_dynamodb
    client.put_item(TableName="t", Item=item_of("a", 1500, version={"N": "1"}))
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.put_item(TableName="t", Item=item_of("a", 10), ConditionExpression="attribute_not_exists(pk)")
    client.update_item(
        TableName="t",
        Key={"pk": s("a")},
        UpdateExpression="SET version = version + :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    client.batch_get_item(RequestItems={"t": {"Keys": [{"pk": s("a")}, {"pk": s("b")}]}})
    meter.settle()
    writes = meter.dynamodb.writes
    assert writes[(PHASE, "t", "PutItem")].units == 2 + 2 and writes[(PHASE, "t", "PutItem")].refused == 1
    assert writes[(PHASE, "t", "UpdateItem")].units == 2
    assert meter.dynamodb.reads[(PHASE, "t", "BatchGetItem")].units == 0.5 + 0.5
    assert meter.calls_of(PHASE)[("dynamodb", "UpdateItem")] == 1
    (stored,) = meter.dynamodb.stored_items("t")
    assert stored["version"] == {"N": "2"}
    actual = client.get_item(TableName="t", Key={"pk": s("a")})["Item"]
    assert json.dumps(stored, sort_keys=True) == json.dumps(actual, sort_keys=True)
