"""The event source mapping's pollers against moto's Kinesis: batching, order, shards, DLQ."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from local_stack_fakes import ScriptedHandler, local_function, sequences
from moto import mock_aws

from cdp.local.kinesis_esm import KinesisEventSourceMapping, SqsDestination
from cdp.resources import STREAM_CONSUMER_ESM

STREAM = "cdp-events"


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        yield {"kinesis": boto3.client("kinesis"), "sqs": boto3.client("sqs")}


def create_stream(kinesis: Any, shards: int = 1) -> None:
    kinesis.create_stream(StreamName=STREAM, ShardCount=shards)


def put(kinesis: Any, count: int, key: Any = lambda i: f"user-{i % 5}", start: int = 0) -> None:
    for chunk in range(start, start + count, 500):
        kinesis.put_records(StreamName=STREAM, Records=[
            {"Data": json.dumps({"n": i}).encode(), "PartitionKey": key(i)}
            for i in range(chunk, min(chunk + 500, start + count))
        ])


def numbers(event: dict[str, Any]) -> list[int]:
    import base64

    return [json.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]]


def run(aws: dict[str, Any], handler: ScriptedHandler, **spec_changes: Any) -> KinesisEventSourceMapping:
    spec = dataclasses.replace(STREAM_CONSUMER_ESM, **{"max_batching_window_s": 0, **spec_changes})
    mapping = KinesisEventSourceMapping(kinesis=aws["kinesis"], stream_name=STREAM,
                                        function=local_function(handler, max_concurrency=10), spec=spec,
                                        retry_backoff_s=0.0, poll_interval_s=0.02)
    mapping.start()
    return mapping


def test_records_are_delivered_in_order_in_batches_of_batch_size(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"])
    put(aws["kinesis"], 250)
    handler = ScriptedHandler()
    mapping = run(aws, handler, batch_size=100)
    try:
        assert mapping.wait_idle(timeout=20)
    finally:
        mapping.stop()

    assert [len(e["Records"]) for e in handler.events] == [100, 100, 50]
    assert [n for e in handler.events for n in numbers(e)] == list(range(250))


def test_the_batching_window_gathers_records_into_one_invocation(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"])
    handler = ScriptedHandler()
    mapping = run(aws, handler, batch_size=100, max_batching_window_s=1)
    try:
        for i in range(5):
            put(aws["kinesis"], 1, start=i)
        assert mapping.wait_idle(timeout=20)
    finally:
        mapping.stop()

    assert [numbers(e) for e in handler.events] == [[0, 1, 2, 3, 4]]


def test_latest_starting_position_skips_records_written_before_the_mapping(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"])
    put(aws["kinesis"], 3)
    handler = ScriptedHandler()
    mapping = run(aws, handler, starting_position="LATEST")
    try:
        put(aws["kinesis"], 2, start=100)
        assert mapping.wait_idle(timeout=20)
    finally:
        mapping.stop()

    assert [n for e in handler.events for n in numbers(e)] == [100, 101]


def test_each_batch_holds_records_of_one_shard_and_every_shard_is_polled(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"], shards=3)
    put(aws["kinesis"], 300, key=lambda i: f"person-{i}")
    handler = ScriptedHandler()
    mapping = run(aws, handler)
    try:
        assert mapping.wait_idle(timeout=20)
    finally:
        mapping.stop()

    shards_per_batch = [{r["eventID"].split(":")[0] for r in e["Records"]} for e in handler.events]
    assert all(len(shards) == 1 for shards in shards_per_batch)
    assert len(set().union(*shards_per_batch)) == 3
    assert sorted(n for e in handler.events for n in numbers(e)) == list(range(300))


def test_parallelization_keeps_the_order_of_each_partition_key(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"])
    put(aws["kinesis"], 400, key=lambda i: f"user-{i % 7}")
    handler = ScriptedHandler()
    mapping = run(aws, handler, parallelization_factor=4, batch_size=25)
    try:
        assert mapping.wait_idle(timeout=20)
    finally:
        mapping.stop()

    seen: dict[int, list[int]] = {}
    for event in handler.events:
        for n in numbers(event):
            seen.setdefault(n % 7, []).append(n)
    assert sorted(n for ns in seen.values() for n in ns) == list(range(400))
    assert all(ns == sorted(ns) for ns in seen.values())


def test_a_poison_record_ends_up_in_the_sqs_dlq_and_the_shard_moves_on(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"])
    queue_url = aws["sqs"].create_queue(QueueName="cdp-stream-consumer-dlq")["QueueUrl"]
    put(aws["kinesis"], 20)
    poison_seq: list[str] = []

    def respond(event: dict[str, Any], _n: int) -> Any:
        failures = [{"itemIdentifier": s} for s, n in zip(sequences(event), numbers(event), strict=True)
                    if n == 7]
        poison_seq.extend(f["itemIdentifier"] for f in failures)
        return {"batchItemFailures": failures}

    handler = ScriptedHandler(respond)
    spec = dataclasses.replace(STREAM_CONSUMER_ESM, max_batching_window_s=0, retry_attempts=2)
    mapping = KinesisEventSourceMapping(kinesis=aws["kinesis"], stream_name=STREAM,
                                        function=local_function(handler), spec=spec,
                                        on_failure=SqsDestination(aws["sqs"], queue_url),
                                        retry_backoff_s=0.0, poll_interval_s=0.02)
    mapping.start()
    try:
        assert mapping.wait_idle(timeout=20)
    finally:
        mapping.stop()

    messages = aws["sqs"].receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    [body] = [json.loads(m["Body"]) for m in messages]
    assert body["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert body["KinesisBatchInfo"]["startSequenceNumber"] == poison_seq[0]
    assert body["KinesisBatchInfo"]["batchSize"] == 1
    assert body["KinesisBatchInfo"]["streamArn"].endswith(":stream/cdp-events")
    delivered_after = {n for e in handler.events for n in numbers(e)}
    assert set(range(20)) <= delivered_after


def test_wait_idle_times_out_while_a_batch_is_still_failing(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"])
    put(aws["kinesis"], 1)

    def respond(_event: dict[str, Any], _n: int) -> Any:
        raise RuntimeError("always")

    handler = ScriptedHandler(respond)
    spec = dataclasses.replace(STREAM_CONSUMER_ESM, max_batching_window_s=0, retry_attempts=-1)
    mapping = KinesisEventSourceMapping(kinesis=aws["kinesis"], stream_name=STREAM,
                                        function=local_function(handler), spec=spec,
                                        retry_backoff_s=0.01, poll_interval_s=0.02)
    mapping.start()
    try:
        assert mapping.wait_idle(timeout=0.5) is False
    finally:
        mapping.stop()
    assert len(handler.events) > 1


def test_filter_criteria_drop_records_whose_data_matches_no_pattern(aws: dict[str, Any]) -> None:
    create_stream(aws["kinesis"])
    aws["kinesis"].put_records(StreamName=STREAM, Records=[
        {"Data": json.dumps({"n": 1, "kind": "event"}).encode(), "PartitionKey": "a"},
        {"Data": json.dumps({"n": 2, "kind": "rejected"}).encode(), "PartitionKey": "a"},
        {"Data": b"not json", "PartitionKey": "a"},
        {"Data": json.dumps({"n": 4, "kind": "event"}).encode(), "PartitionKey": "b"},
    ])
    handler = ScriptedHandler()
    spec = dataclasses.replace(STREAM_CONSUMER_ESM, max_batching_window_s=0)
    mapping = KinesisEventSourceMapping(kinesis=aws["kinesis"], stream_name=STREAM,
                                        function=local_function(handler, max_concurrency=10), spec=spec,
                                        retry_backoff_s=0.0, poll_interval_s=0.02,
                                        filter_patterns=['{"data": {"kind": ["event"]}}'])
    mapping.start()
    try:
        assert mapping.wait_idle(timeout=20)
    finally:
        mapping.stop()

    assert [n for e in handler.events for n in numbers(e)] == [1, 4]
    assert mapping.records_filtered_out == 2
