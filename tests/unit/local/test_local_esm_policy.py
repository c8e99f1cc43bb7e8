"""The event source mapping's retry policy, run synchronously with a scripted handler."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from local_stack_fakes import (
    NOW,
    SHARD,
    STREAM_ARN,
    FakeClock,
    ScriptedHandler,
    StubKinesis,
    local_function,
    make_records,
    sequences,
)

from cdp.local.functions import MAX_PAYLOAD_BYTES
from cdp.local.kinesis_esm import KinesisEventSourceMapping, batch_byte_limited
from cdp.local.lambda_events import KinesisRecord
from cdp.resources import STREAM_CONSUMER_ESM, KinesisEventSourceSpec

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:cdp-stream-consumer"


def mapping_for(handler: ScriptedHandler, clock: FakeClock, **spec_changes: Any
                ) -> tuple[KinesisEventSourceMapping, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    spec = dataclasses.replace(STREAM_CONSUMER_ESM, **spec_changes)
    mapping = KinesisEventSourceMapping(
        kinesis=StubKinesis(), stream_name="cdp-events", function=local_function(handler), spec=spec,
        on_failure=sent.append, clock=clock, sleep=clock.sleep, retry_backoff_s=0.5)
    return mapping, sent


def fail_on(poison: set[str]) -> Any:
    """A handler that raises whenever its batch holds a poison sequence number."""
    def respond(event: dict[str, Any], _n: int) -> Any:
        if poison & set(sequences(event)):
            raise RuntimeError("poison record")
        return {"batchItemFailures": []}
    return respond


def report(poison: set[str]) -> Any:
    """A handler that reports poison records as batch item failures."""
    def respond(event: dict[str, Any], _n: int) -> Any:
        return {"batchItemFailures": [{"itemIdentifier": s} for s in sequences(event) if s in poison]}
    return respond


def test_a_successful_batch_is_one_invocation_with_the_lambda_kinesis_event_shape(clock: FakeClock) -> None:
    handler = ScriptedHandler()
    mapping, sent = mapping_for(handler, clock)
    records = make_records(3)

    mapping.deliver(records)

    assert len(handler.events) == 1
    first = handler.events[0]["Records"][0]
    assert first == {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": records[0].partition_key,
            "sequenceNumber": records[0].sequence_number,
            "data": base64.b64encode(records[0].data).decode(),
            "approximateArrivalTimestamp": records[0].approximate_arrival,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{SHARD}:{records[0].sequence_number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/cdp-stream-consumer-role",
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN,
    }
    assert sequences(handler.events[0]) == [r.sequence_number for r in records]
    assert sent == []
    assert mapping.stats.records_delivered == 3


@pytest.mark.parametrize("result", [None, {}, {"batchItemFailures": None}, {"batchItemFailures": []}, "ok"])
def test_empty_or_null_responses_are_complete_successes(clock: FakeClock, result: Any) -> None:
    handler = ScriptedHandler(lambda _e, _n: result)
    mapping, sent = mapping_for(handler, clock)

    mapping.deliver(make_records(4))

    assert len(handler.events) == 1
    assert sent == []


def test_a_raising_handler_is_retried_then_the_batch_goes_to_the_dlq(clock: FakeClock) -> None:
    handler = ScriptedHandler(fail_on({"49000000001"}))
    mapping, sent = mapping_for(handler, clock, bisect_batch_on_error=False, retry_attempts=3)
    records = make_records(4)

    mapping.deliver(records)

    assert len(handler.events) == 1 + 3  # first attempt and three retries, each the whole batch
    assert all(batch == [r.sequence_number for r in records] for batch in handler.batches())
    assert clock.sleeps == [0.5, 1.0, 2.0]  # exponential back-off between retries
    [message] = sent
    assert message == {
        "requestContext": {
            "requestId": message["requestContext"]["requestId"],
            "functionArn": FUNCTION_ARN,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 4,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2024-05-02T09:21:50.500Z",
        "KinesisBatchInfo": {
            "shardId": SHARD,
            "startSequenceNumber": records[0].sequence_number,
            "endSequenceNumber": records[-1].sequence_number,
            "approximateArrivalOfFirstRecord": "2024-05-02T09:21:42.001Z",
            "approximateArrivalOfLastRecord": "2024-05-02T09:21:42.004Z",
            "batchSize": 4,
            "streamArn": STREAM_ARN,
        },
    }
    assert len(message["requestContext"]["requestId"]) == 36


def test_zero_retry_attempts_sends_a_failed_batch_to_the_dlq_at_once(clock: FakeClock) -> None:
    handler = ScriptedHandler(fail_on({"49000000002"}))
    mapping, sent = mapping_for(handler, clock, bisect_batch_on_error=False, retry_attempts=0)

    mapping.deliver(make_records(3))

    assert len(handler.events) == 1
    assert sent[0]["requestContext"]["approximateInvokeCount"] == 1


def test_infinite_retries_keep_going_until_the_handler_succeeds(clock: FakeClock) -> None:
    def respond(_event: dict[str, Any], number: int) -> Any:
        if number < 8:
            raise RuntimeError("not yet")
        return None

    handler = ScriptedHandler(respond)
    mapping, sent = mapping_for(handler, clock, bisect_batch_on_error=False, retry_attempts=-1)

    mapping.deliver(make_records(2))

    assert len(handler.events) == 8
    assert sent == []


def test_partial_failure_checkpoints_before_the_lowest_failed_record(clock: FakeClock) -> None:
    records = make_records(6)
    failing = {records[4].sequence_number, records[2].sequence_number}

    def respond(event: dict[str, Any], number: int) -> Any:
        return report(failing)(event, number) if number == 1 else None

    handler = ScriptedHandler(respond)
    mapping, sent = mapping_for(handler, clock, bisect_batch_on_error=False)

    mapping.deliver(records)

    assert handler.batches() == [
        [r.sequence_number for r in records],
        [r.sequence_number for r in records[2:]],  # retried from the lowest failure on
    ]
    assert clock.sleeps == [0.5]  # the retry of the rest counts as a retry
    assert sent == []
    assert mapping.stats.records_delivered == 6


@pytest.mark.parametrize("failures", [
    [{"itemIdentifier": ""}],
    [{"itemIdentifier": None}],
    [{"itemId": "49000000002"}],
    [{"itemIdentifier": "12345"}],  # not a record of this batch
    "not-a-list",
], ids=["empty", "null", "bad-key-name", "unknown-sequence", "not-a-list"])
def test_an_invalid_item_identifier_fails_the_whole_batch(clock: FakeClock, failures: Any) -> None:
    def respond(_event: dict[str, Any], number: int) -> Any:
        return {"batchItemFailures": failures} if number == 1 else None

    handler = ScriptedHandler(respond)
    mapping, _sent = mapping_for(handler, clock, bisect_batch_on_error=False)
    records = make_records(3)

    mapping.deliver(records)

    assert handler.batches() == [[r.sequence_number for r in records]] * 2


def test_batch_item_failures_are_ignored_without_report_batch_item_failures(clock: FakeClock) -> None:
    records = make_records(3)
    handler = ScriptedHandler(report({records[1].sequence_number}))
    mapping, sent = mapping_for(handler, clock, report_batch_item_failures=False)

    mapping.deliver(records)

    assert len(handler.events) == 1
    assert sent == []


def test_bisect_isolates_a_poison_record_and_only_it_goes_to_the_dlq(clock: FakeClock) -> None:
    records = make_records(8)
    poison = records[5]
    handler = ScriptedHandler(fail_on({poison.sequence_number}))
    mapping, sent = mapping_for(handler, clock, bisect_batch_on_error=True, retry_attempts=2)

    mapping.deliver(records)

    sizes = [len(batch) for batch in handler.batches()]
    # 8 fails -> [0-3] ok, [4-7] fails -> [4,5] fails -> [4] ok, [5] fails + 2 retries -> [6,7] ok
    assert sizes == [8, 4, 4, 2, 1, 1, 1, 1, 2]
    delivered = [s for batch, size in zip(handler.batches(), sizes, strict=True) for s in batch
                 if poison.sequence_number not in batch]
    assert sorted(delivered) == sorted(r.sequence_number for r in records if r is not poison)
    assert clock.sleeps == [0.5, 1.0]  # splitting does not use up retries
    [message] = sent
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == poison.sequence_number
    assert message["KinesisBatchInfo"]["endSequenceNumber"] == poison.sequence_number
    assert message["KinesisBatchInfo"]["batchSize"] == 1
    assert message["requestContext"]["approximateInvokeCount"] == 6  # 8, 4, 2, 1 and two retries
    assert mapping.stats.records_delivered == 7
    assert mapping.stats.records_discarded == 1


def test_bisect_with_partial_failure_splits_at_the_failed_record(clock: FakeClock) -> None:
    records = make_records(6)
    poison = records[3]
    handler = ScriptedHandler(report({poison.sequence_number}))
    mapping, sent = mapping_for(handler, clock, bisect_batch_on_error=True, retry_attempts=1)

    mapping.deliver(records)

    seqs = [r.sequence_number for r in records]
    assert handler.batches() == [
        seqs,          # fails at index 3: records 0-2 are checkpointed
        seqs[3:],      # the rest, split at the failed record; fails at its first record
        seqs[3:4],     # bisected: [3] ...
        seqs[3:4],     # ... retried once
        seqs[4:],      # the other half
    ]
    [message] = sent
    assert message["KinesisBatchInfo"]["batchSize"] == 1
    assert "functionError" not in message["responseContext"]  # the function did not fail; it reported
    assert mapping.stats.records_delivered == 5


def test_records_older_than_the_maximum_age_are_discarded_without_invoking(clock: FakeClock) -> None:
    old = make_records(2, arrival=NOW - 7 * 3600)
    fresh = make_records(2, start=10, arrival=NOW - 60)
    handler = ScriptedHandler()
    mapping, sent = mapping_for(handler, clock, max_record_age_s=6 * 3600)

    mapping.deliver(old + fresh)

    assert handler.batches() == [[r.sequence_number for r in fresh]]
    [message] = sent
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["requestContext"]["approximateInvokeCount"] == 0
    assert message["KinesisBatchInfo"]["batchSize"] == 2
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == old[0].sequence_number


def test_records_that_age_out_while_retried_go_to_the_dlq_as_record_age_exceeded(clock: FakeClock) -> None:
    handler = ScriptedHandler(fail_on({"49000000001"}))
    mapping, sent = mapping_for(handler, clock, bisect_batch_on_error=False, retry_attempts=-1,
                                max_record_age_s=60)
    mapping._backoff = 25.0  # each retry waits 25 s (fake clock), so the records age out

    mapping.deliver(make_records(2, arrival=NOW))

    [message] = sent
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["requestContext"]["approximateInvokeCount"] == len(handler.events)
    assert message["responseContext"]["functionError"] == "Unhandled"


def test_on_failure_errors_do_not_stop_the_shard(clock: FakeClock) -> None:
    handler = ScriptedHandler(fail_on({"49000000001"}))

    def broken_destination(_message: dict[str, Any]) -> None:
        raise ConnectionError("sqs down")

    mapping = KinesisEventSourceMapping(
        kinesis=StubKinesis(), stream_name="cdp-events", function=local_function(handler),
        spec=dataclasses.replace(STREAM_CONSUMER_ESM, retry_attempts=0, bisect_batch_on_error=False),
        on_failure=broken_destination, clock=clock, sleep=clock.sleep)

    mapping.deliver(make_records(2))

    assert mapping.stats.records_discarded == 2
    assert mapping.stats.on_failure_messages == 0


def test_batches_stay_under_lambdas_six_megabyte_request_limit() -> None:
    big = [KinesisRecord(SHARD, str(i), "pk", b"x" * 900_000, NOW) for i in range(10)]

    count = batch_byte_limited(big, 100)

    assert count == 5  # 5 x 1.2 MB of base64 fit, 6 would not
    assert sum(r.approximate_event_bytes() for r in big[:count]) < MAX_PAYLOAD_BYTES
    assert batch_byte_limited(make_records(300), 100) == 100


def test_the_project_esm_spec_is_what_the_emulator_honours() -> None:
    # A reminder that the defaults under test are the deployed ones.
    assert isinstance(STREAM_CONSUMER_ESM, KinesisEventSourceSpec)
    assert STREAM_CONSUMER_ESM.bisect_batch_on_error is True
    assert STREAM_CONSUMER_ESM.report_batch_item_failures is True
