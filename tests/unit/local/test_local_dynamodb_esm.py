"""The DynamoDB Streams event source mapping against moto: event shape, batching, filters, failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from local_stack_fakes import FakeClock, ScriptedHandler, local_function
from moto import mock_aws

from cdp.local.dynamodb_esm import (
    DynamoDbEventSourceMapping,
    DynamoDbEventSourceSpec,
    DynamoDbStreamRecord,
    SqsDestination,
    dynamodb_streams_client,
    latest_stream_arn,
)
from cdp.local.event_filtering import FilterCriteria, InvalidFilterPattern

TABLE = "cdp-profiles"
SAMPLE = Path(__file__).resolve().parents[3] / "events" / "dynamodb_stream_batch.json"


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
        yield {"dynamodb": dynamodb, "streams": dynamodb_streams_client(), "sqs": boto3.client("sqs")}


def put(aws: dict[str, Any], pk: str, **attributes: Any) -> None:
    item = {"pk": {"S": pk}, **attributes}
    aws["dynamodb"].put_item(TableName=TABLE, Item=item)


def put_many(aws: dict[str, Any], count: int, prefix: str = "prof#") -> None:
    for i in range(count):
        put(aws, f"{prefix}{i:03d}", n={"N": str(i)})


def keys(event: dict[str, Any]) -> list[str]:
    return [r["dynamodb"]["Keys"]["pk"]["S"] for r in event["Records"]]


def sequences(event: dict[str, Any]) -> list[str]:
    return [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]


def run(aws: dict[str, Any], handler: ScriptedHandler, on_failure: Any = None,
        **spec: Any) -> DynamoDbEventSourceMapping:
    mapping = DynamoDbEventSourceMapping(
        streams=aws["streams"], stream_arn=latest_stream_arn(aws["dynamodb"], TABLE),
        function=local_function(handler, name="cdp-audience-evaluator"), spec=DynamoDbEventSourceSpec(**spec),
        on_failure=on_failure, retry_backoff_s=0.0, poll_interval_s=0.02)
    mapping.start()
    return mapping


def drain(mapping: DynamoDbEventSourceMapping) -> None:
    try:
        assert mapping.wait_idle(timeout=10)
    finally:
        mapping.stop()


def test_puts_updates_and_deletes_arrive_as_insert_modify_remove_in_lambdas_event_shape(aws: dict[str, Any]) -> None:
    put(aws, "prof#1", name={"S": "Ada"}, blob={"B": b"\x00\xff"}, tags={"BS": [b"\x01"]},
        nested={"M": {"raw": {"B": b"\x02"}, "list": {"L": [{"B": b"\x03"}]}}})
    aws["dynamodb"].update_item(TableName=TABLE, Key={"pk": {"S": "prof#1"}}, UpdateExpression="SET #n = :v",
                                ExpressionAttributeNames={"#n": "name"},
                                ExpressionAttributeValues={":v": {"S": "Grace"}})
    aws["dynamodb"].delete_item(TableName=TABLE, Key={"pk": {"S": "prof#1"}})
    handler = ScriptedHandler()
    drain(run(aws, handler))

    [event] = handler.events
    insert, modify, remove = event["Records"]
    assert [r["eventName"] for r in event["Records"]] == ["INSERT", "MODIFY", "REMOVE"]
    sample = json.loads(SAMPLE.read_text())["Records"][0]
    for record in event["Records"]:
        assert list(record) == list(sample)  # same fields, same order
        assert record["eventVersion"] == "1.1" and record["eventSource"] == "aws:dynamodb"
        assert record["eventSourceARN"] == latest_stream_arn(aws["dynamodb"], TABLE)
        assert record["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert isinstance(record["dynamodb"]["ApproximateCreationDateTime"], int)
        assert record["dynamodb"]["Keys"] == {"pk": {"S": "prof#1"}}
    assert list(insert["dynamodb"]) == ["ApproximateCreationDateTime", "Keys", "NewImage", "SequenceNumber",
                                        "SizeBytes", "StreamViewType"]
    assert insert["dynamodb"]["NewImage"]["blob"] == {"B": "AP8="}
    assert insert["dynamodb"]["NewImage"]["tags"] == {"BS": ["AQ=="]}
    assert insert["dynamodb"]["NewImage"]["nested"] == {"M": {"raw": {"B": "Ag=="}, "list": {"L": [{"B": "Aw=="}]}}}
    assert modify["dynamodb"]["OldImage"]["name"] == {"S": "Ada"}
    assert modify["dynamodb"]["NewImage"]["name"] == {"S": "Grace"}
    assert "NewImage" not in remove["dynamodb"]
    assert remove["dynamodb"]["OldImage"]["name"] == {"S": "Grace"}
    assert sequences(event) == sorted(sequences(event), key=int)


def test_a_write_that_changes_nothing_reaches_no_function_as_in_aws(aws: dict[str, Any]) -> None:
    put(aws, "prof#1", n={"N": "1"})
    put(aws, "prof#1", n={"N": "1"})  # moto streams this as a MODIFY; DynamoDB writes no record
    put(aws, "prof#1", n={"N": "2"})
    handler = ScriptedHandler()
    mapping = run(aws, handler)
    drain(mapping)

    assert [r["eventName"] for e in handler.events for r in e["Records"]] == ["INSERT", "MODIFY"]
    assert mapping.unchanged_modifies_dropped == 1


def test_records_are_delivered_in_order_in_batches_of_batch_size(aws: dict[str, Any]) -> None:
    put_many(aws, 25)
    handler = ScriptedHandler()
    drain(run(aws, handler, batch_size=10))

    assert [len(e["Records"]) for e in handler.events] == [10, 10, 5]
    assert [k for e in handler.events for k in keys(e)] == [f"prof#{i:03d}" for i in range(25)]


def test_the_batching_window_gathers_changes_into_one_invocation(aws: dict[str, Any]) -> None:
    handler = ScriptedHandler()
    mapping = run(aws, handler, batch_size=100, max_batching_window_s=1)
    put_many(aws, 5)
    drain(mapping)

    assert [len(e["Records"]) for e in handler.events] == [5]


def test_filter_criteria_drop_records_that_match_no_filter_without_invoking(aws: dict[str, Any]) -> None:
    put_many(aws, 3, prefix="prof#")
    put_many(aws, 3, prefix="ident#")
    aws["dynamodb"].delete_item(TableName=TABLE, Key={"pk": {"S": "ident#000"}})
    handler = ScriptedHandler()
    mapping = run(aws, handler, filter_patterns=(
        json.dumps({"dynamodb": {"Keys": {"pk": {"S": [{"prefix": "prof#"}]}}}}),
        json.dumps({"eventName": ["REMOVE"]}),
    ))
    drain(mapping)

    assert [k for e in handler.events for k in keys(e)] == ["prof#000", "prof#001", "prof#002", "ident#000"]
    assert mapping.records_filtered_out == 3


def test_only_filtered_out_records_means_no_invocation(aws: dict[str, Any]) -> None:
    put_many(aws, 4, prefix="ident#")
    handler = ScriptedHandler()
    mapping = run(aws, handler, filter_patterns=(json.dumps({"eventName": ["MODIFY"]}),))
    drain(mapping)
    assert handler.events == []
    assert mapping.records_filtered_out == 4


def test_a_partial_batch_response_redelivers_the_failed_record_and_those_after_it(aws: dict[str, Any]) -> None:
    put_many(aws, 6)

    def respond(event: dict[str, Any], call: int) -> Any:
        if call == 1:
            return {"batchItemFailures": [{"itemIdentifier": sequences(event)[4]},
                                          {"itemIdentifier": sequences(event)[2]}]}
        return {"batchItemFailures": []}

    handler = ScriptedHandler(respond)
    drain(run(aws, handler, report_batch_item_failures=True))

    assert [keys(e) for e in handler.events] == [[f"prof#{i:03d}" for i in range(6)],
                                                 [f"prof#{i:03d}" for i in range(2, 6)]]


def test_bisect_isolates_a_poison_record_and_only_it_goes_to_the_on_failure_destination(
        aws: dict[str, Any]) -> None:
    queue_url = aws["sqs"].create_queue(QueueName="cdp-audience-evaluator-dlq")["QueueUrl"]
    put_many(aws, 8)

    def respond(event: dict[str, Any], _call: int) -> Any:
        if "prof#005" in keys(event):
            raise RuntimeError("poison")
        return None

    handler = ScriptedHandler(respond)
    mapping = run(aws, handler, SqsDestination(aws["sqs"], queue_url), bisect_batch_on_error=True,
                  retry_attempts=0)
    drain(mapping)

    messages = aws["sqs"].receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    [body] = [json.loads(m["Body"]) for m in messages]
    assert body["DDBStreamBatchInfo"]["batchSize"] == 1
    poison_seq = next(r["dynamodb"]["SequenceNumber"] for e in handler.events for r in e["Records"]
                      if r["dynamodb"]["Keys"]["pk"]["S"] == "prof#005")
    assert body["DDBStreamBatchInfo"]["startSequenceNumber"] == poison_seq
    delivered = {k for e in handler.events if "prof#005" not in keys(e) for k in keys(e)}
    assert delivered == {f"prof#{i:03d}" for i in range(8)} - {"prof#005"}
    assert mapping.stats.records_discarded == 1


def test_exhausted_retries_send_the_batch_description_to_the_on_failure_destination(aws: dict[str, Any]) -> None:
    queue_url = aws["sqs"].create_queue(QueueName="cdp-audience-evaluator-dlq")["QueueUrl"]
    put_many(aws, 3)

    def respond(_event: dict[str, Any], _call: int) -> Any:
        raise RuntimeError("always")

    handler = ScriptedHandler(respond)
    arn = latest_stream_arn(aws["dynamodb"], TABLE)
    drain(run(aws, handler, SqsDestination(aws["sqs"], queue_url), retry_attempts=2))

    assert len(handler.events) == 3  # the first invocation and two retries
    [message] = aws["sqs"].receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    body = json.loads(message["Body"])
    assert list(body) == ["requestContext", "responseContext", "version", "timestamp", "DDBStreamBatchInfo"]
    assert body["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert body["requestContext"]["approximateInvokeCount"] == 3
    assert body["requestContext"]["functionArn"].endswith(":function:cdp-audience-evaluator")
    assert body["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    info = body["DDBStreamBatchInfo"]
    seqs = sequences(handler.events[0])
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (seqs[0], seqs[-1], 3)
    assert info["streamArn"] == arn
    assert info["shardId"].startswith("shardId-")
    assert info["approximateArrivalOfFirstRecord"].endswith("Z")


def test_latest_starting_position_skips_changes_made_before_the_mapping(aws: dict[str, Any]) -> None:
    put_many(aws, 3, prefix="old#")
    handler = ScriptedHandler()
    mapping = run(aws, handler, starting_position="LATEST")
    assert mapping.wait_idle(timeout=10)
    put_many(aws, 2, prefix="new#")
    drain(mapping)

    assert [k for e in handler.events for k in keys(e)] == ["new#000", "new#001"]


def test_records_older_than_the_maximum_age_are_discarded_without_invoking(aws: dict[str, Any],
                                                                         clock: FakeClock) -> None:
    sent: list[dict[str, Any]] = []
    handler = ScriptedHandler()
    mapping = DynamoDbEventSourceMapping(
        streams=aws["streams"], stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
        function=local_function(handler), spec=DynamoDbEventSourceSpec(max_record_age_s=60),
        on_failure=sent.append, clock=clock, sleep=clock.sleep)
    old = [DynamoDbStreamRecord("shardId-1", str(100 + i), clock.now - 120, {"n": i}) for i in range(2)]
    fresh = DynamoDbStreamRecord("shardId-1", "200", clock.now - 1, {"n": 9})
    mapping.deliver([*old, fresh])

    assert handler.events == [{"Records": [{"n": 9}]}]
    [message] = sent
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["requestContext"]["approximateInvokeCount"] == 0
    assert message["DDBStreamBatchInfo"]["batchSize"] == 2


@pytest.mark.parametrize(("pattern", "record", "expected"), [
    ({"eventName": ["INSERT", "MODIFY"]}, {"eventName": "MODIFY"}, True),
    ({"eventName": ["INSERT"]}, {"eventName": "REMOVE"}, False),
    ({"dynamodb": {"NewImage": {"tier": {"S": [{"anything-but": ["free", "trial"]}]}}}},
     {"dynamodb": {"NewImage": {"tier": {"S": "pro"}}}}, True),
    ({"dynamodb": {"NewImage": {"tier": {"S": [{"anything-but": "free"}]}}}},
     {"dynamodb": {"NewImage": {"tier": {"S": "free"}}}}, False),
    ({"dynamodb": {"NewImage": {"tier": {"S": [{"anything-but": "free"}]}}}}, {"dynamodb": {}}, False),
    ({"dynamodb": {"OldImage": {"pk": {"S": [{"exists": False}]}}}}, {"dynamodb": {"NewImage": {}}}, True),
    ({"dynamodb": {"OldImage": {"pk": {"S": [{"exists": True}]}}}}, {"dynamodb": {"NewImage": {}}}, False),
    ({"dynamodb": {"NewImage": {"tags": {"SS": ["vip"]}}}},
     {"dynamodb": {"NewImage": {"tags": {"SS": ["new", "vip"]}}}}, True),
    ({"dynamodb": {"SizeBytes": [10]}}, {"dynamodb": {"SizeBytes": 10}}, True),
    ({"flag": [True]}, {"flag": 1}, False),
])
def test_filter_patterns_match_like_lambda(pattern: dict[str, Any], record: dict[str, Any],
                                           expected: bool) -> None:
    assert FilterCriteria.from_api({"Filters": [{"Pattern": json.dumps(pattern)}]}).matches(record) is expected


@pytest.mark.parametrize("pattern", [
    {"eventName": "INSERT"},  # a leaf must be a list
    {"dynamodb": {"SizeBytes": [{"numeric": [">", 1]}]}},  # not emulated: refused, never ignored
    {"eventName": []},
])
def test_unsupported_or_invalid_patterns_are_refused(pattern: dict[str, Any]) -> None:
    with pytest.raises(InvalidFilterPattern):
        FilterCriteria.from_patterns([pattern])
