"""The emulated SQS event source mapping against moto's server: event shape, deletion,
partial and whole failures, FIFO group order, the batching window, idle and drained."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from cdp.local.functions import Invocation, LocalFunction, repo_root
from cdp.local.lambda_events import sqs_queue_arn
from cdp.local.samples import render
from cdp.local.sqs_esm import (
    SqsEventSourceMapping,
    SqsEventSourceSpec,
    SqsReceivedMessage,
    failed_messages,
    sqs_event,
)
from cdp.segmentation.audience_events import EVENT_NAMES, audience_message_id

SAMPLE = repo_root() / "events" / "sqs_fifo_destination_batch.json"

# The keys of AWS's sample events ("Using Lambda with Amazon SQS": a standard queue's
# message event and a FIFO queue's).
DOCUMENTED_RECORD_KEYS = {"messageId", "receiptHandle", "body", "attributes", "messageAttributes", "md5OfBody",
                          "eventSource", "eventSourceARN", "awsRegion"}
DOCUMENTED_STANDARD_ATTRIBUTES = {"ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                  "ApproximateFirstReceiveTimestamp"}
DOCUMENTED_FIFO_ATTRIBUTES = DOCUMENTED_STANDARD_ATTRIBUTES | {"SequenceNumber", "MessageGroupId",
                                                               "MessageDeduplicationId"}


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


def create_queue(sqs: Any, fifo: bool = False, visibility_s: int = 30, **attributes: str) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}{'.fifo' if fifo else ''}"
    if fifo:
        attributes["FifoQueue"] = "true"
    attributes["VisibilityTimeout"] = str(visibility_s)
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


def send(sqs: Any, url: str, body: str, group: str | None = None, **extra: Any) -> None:
    if group is not None:
        extra.update(MessageGroupId=group, MessageDeduplicationId=extra.get("MessageDeduplicationId", body))
    sqs.send_message(QueueUrl=url, MessageBody=body, **extra)


class RecordingHandler:
    """A function's handler whose answer is ``respond(event, call_number)``; keeps every event."""

    def __init__(self, respond: Callable[[dict[str, Any], int], Any] | None = None) -> None:
        self.respond = respond or (lambda _event, _n: None)
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any], _context: Any) -> Any:
        with self.lock:
            self.events.append(event)
            number = len(self.events)
        return self.respond(event, number)

    def bodies(self) -> list[list[str]]:
        with self.lock:
            return [[record["body"] for record in event["Records"]] for event in self.events]

    def delivered(self) -> list[str]:
        return [body for batch in self.bodies() for body in batch]


def mapping_for(sqs: Any, url: str, handler: RecordingHandler, **spec: Any) -> SqsEventSourceMapping:
    function = LocalFunction("cdp-destination-test", lambda _index: handler, timeout_s=60, max_concurrency=10)
    return SqsEventSourceMapping(sqs=sqs, queue_url=url, function=function, spec=SqsEventSourceSpec(**spec),
                                 poll_interval_s=0.02)


@pytest.fixture
def running() -> Iterator[list[SqsEventSourceMapping]]:
    started: list[SqsEventSourceMapping] = []
    yield started
    for mapping in started:
        mapping.stop()


def start(running: list[SqsEventSourceMapping], mapping: SqsEventSourceMapping) -> SqsEventSourceMapping:
    mapping.start()
    running.append(mapping)
    return mapping


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- the event ----------------------------------------------------------------------


def test_a_fifo_record_has_the_documented_keys_and_lambdas_message_attribute_shape(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs, fifo=True)
    send(sqs, url, '{"n":1}', group="profile-1", MessageAttributes={
        "reason": {"DataType": "String", "StringValue": "first"},
        "raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "attempts": {"DataType": "Number", "StringValue": "2"},
    })
    handler = RecordingHandler()
    mapping = start(running, mapping_for(sqs, url, handler))
    assert mapping.wait_idle(10)

    (record,) = handler.events[0]["Records"]
    assert set(record) == DOCUMENTED_RECORD_KEYS | {"md5OfMessageAttributes"}
    assert set(record["attributes"]) == DOCUMENTED_FIFO_ATTRIBUTES
    assert record["attributes"]["MessageGroupId"] == "profile-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"] == {
        "reason": {"stringValue": "first", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
        "raw": {"binaryValue": "AAE=", "stringListValues": [], "binaryListValues": [], "dataType": "Binary"},
        "attempts": {"stringValue": "2", "stringListValues": [], "binaryListValues": [], "dataType": "Number"},
    }
    assert record["md5OfBody"] == hashlib.md5(b'{"n":1}', usedforsecurity=False).hexdigest()
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == sqs_queue_arn(url.rsplit("/", 1)[1])
    assert record["awsRegion"] == "us-east-1"


def test_a_standard_record_without_attributes_has_exactly_the_documented_keys(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs)
    send(sqs, url, "Test message.")
    handler = RecordingHandler()
    mapping = start(running, mapping_for(sqs, url, handler))
    assert mapping.wait_idle(10)

    (record,) = handler.events[0]["Records"]
    assert set(record) == DOCUMENTED_RECORD_KEYS
    assert set(record["attributes"]) == DOCUMENTED_STANDARD_ATTRIBUTES
    assert record["messageAttributes"] == {}


def fifo_destination_sample() -> dict[str, Any]:
    """Two profiles' audience changes on a webhook destination's FIFO queue, as its Lambda gets them."""
    queue = "cdp-dest-crm-webhook.fifo"
    changes = [("aud_high_value", "prof_7f3a9c", "entered", 3, 1714641707120, "18889123412341234001"),
               ("aud_trial_users", "prof_2b81d4", "exited", 8, 1714641707214, "18889123412341234002")]
    messages = []
    for index, (audience, profile, transition, version, sent_ms, sequence) in enumerate(changes):
        dedup = audience_message_id(audience, profile, transition, version)  # type: ignore[arg-type]
        body = json.dumps({
            "kind": "audience_membership", "destination_id": "crm-webhook", "message_id": dedup,
            "audience_id": audience, "profile_id": profile, "transition": transition,
            "event": EVENT_NAMES[transition], "version": version,
            "at": datetime.fromtimestamp((sent_ms - 40) / 1000, UTC).isoformat(timespec="milliseconds"),
        }, separators=(",", ":"))
        message_id = str(uuid.UUID(hashlib.md5(dedup.encode(), usedforsecurity=False).hexdigest()))
        messages.append(SqsReceivedMessage(
            message_id=message_id,
            receipt_handle="AQEB" + hashlib.sha256(f"receipt-{index}".encode()).hexdigest(),
            body=body,
            attributes={"ApproximateReceiveCount": "1", "SentTimestamp": str(sent_ms), "SequenceNumber": sequence,
                        "MessageGroupId": profile, "SenderId": "AROAEXAMPLEID:cdp-activation-router",
                        "MessageDeduplicationId": dedup, "ApproximateFirstReceiveTimestamp": str(sent_ms + 9)},
            message_attributes={},
            md5_of_body=hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        ))
    return sqs_event(messages, queue_arn=sqs_queue_arn(queue))


def test_the_committed_fifo_destination_sample_is_what_sqs_event_builds() -> None:
    assert SAMPLE.read_text(encoding="utf-8") == render(fifo_destination_sample())
    for record in fifo_destination_sample()["Records"]:
        assert set(record) == DOCUMENTED_RECORD_KEYS
        assert set(record["attributes"]) == DOCUMENTED_FIFO_ATTRIBUTES


# --- what a response means ---------------------------------------------------------------

IDS = ["m1", "m2", "m3"]


@pytest.mark.parametrize(("result", "keep", "whole"), [
    (None, set(), False),
    ({}, set(), False),
    ({"batchItemFailures": None}, set(), False),
    ({"batchItemFailures": []}, set(), False),
    ({"batchItemFailures": [{"itemIdentifier": "m2"}]}, {"m2"}, False),
    ({"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m3"}]}, {"m1", "m3"}, False),
    ({"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]}, set(IDS), True),
    ({"batchItemFailures": [{"itemIdentifier": ""}]}, set(IDS), True),
    ({"batchItemFailures": [{"itemIdentifier": None}]}, set(IDS), True),
    ({"batchItemFailures": [{"ItemIdentifier": "m2"}]}, set(IDS), True),
    ({"batchItemFailures": "m2"}, set(IDS), True),
    ("ok", set(IDS), True),
])
def test_a_partial_batch_response_is_read_by_lambdas_rules(result: Any, keep: set[str], whole: bool) -> None:
    assert failed_messages(IDS, Invocation("r", result=result), True) == (keep, whole)


def test_without_report_batch_item_failures_any_answer_is_a_success_and_an_error_a_failure() -> None:
    reported = Invocation("r", result={"batchItemFailures": [{"itemIdentifier": "m2"}]})
    assert failed_messages(IDS, reported, False) == (set(), False)
    assert failed_messages(IDS, Invocation("r", error_type="Unhandled"), False) == (set(IDS), True)
    assert failed_messages(IDS, Invocation("r", error_type="Unhandled"), True) == (set(IDS), True)


@pytest.mark.parametrize(("fifo", "changes"), [
    (True, {"batch_size": 11}),
    (True, {"max_batching_window_s": 1}),
    (False, {"batch_size": 10_001, "max_batching_window_s": 1}),
    (False, {"batch_size": 11}),
    (False, {"max_concurrency": 1}),
])
def test_settings_lambda_refuses_are_refused(fifo: bool, changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SqsEventSourceSpec(**changes).check(fifo)


# --- deletion and failures against moto ----------------------------------------------------


def test_successful_batches_are_deleted_in_batches_of_at_most_batch_size(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs)
    for i in range(25):
        send(sqs, url, f"m{i}")
    handler = RecordingHandler()
    mapping = start(running, mapping_for(sqs, url, handler, batch_size=10))
    assert mapping.wait_drained(15)

    assert sorted(handler.delivered()) == sorted(f"m{i}" for i in range(25))
    assert all(len(batch) <= 10 for batch in handler.bodies())
    stats = mapping.stats
    assert (stats.records, stats.records_deleted, stats.batch_failures, stats.item_failures) == (25, 25, 0, 0)


def test_reported_item_failures_stay_and_come_back_after_the_visibility_timeout(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs, visibility_s=1)
    for i in range(3):
        send(sqs, url, f"m{i}")

    def respond(event: dict[str, Any], _n: int) -> Any:
        failed = [r for r in event["Records"]
                  if r["body"] == "m1" and r["attributes"]["ApproximateReceiveCount"] == "1"]
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in failed]}

    handler = RecordingHandler(respond)
    mapping = start(running, mapping_for(sqs, url, handler, report_batch_item_failures=True))
    assert mapping.wait_drained(15)

    assert sorted(handler.delivered()) == ["m0", "m1", "m1", "m2"]
    last = handler.events[-1]["Records"]
    assert [(r["body"], r["attributes"]["ApproximateReceiveCount"]) for r in last] == [("m1", "2")]
    assert mapping.stats.item_failures == 1
    assert mapping.stats.records_deleted == 3


def test_an_invocation_error_keeps_the_whole_batch(sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs, visibility_s=1)
    for i in range(3):
        send(sqs, url, f"m{i}")

    def respond(_event: dict[str, Any], number: int) -> Any:
        if number == 1:
            raise RuntimeError("destination down")
        return None

    handler = RecordingHandler(respond)
    mapping = start(running, mapping_for(sqs, url, handler, report_batch_item_failures=True))
    assert mapping.wait_drained(15)

    first, *rest = handler.bodies()
    assert sorted(first) == ["m0", "m1", "m2"]
    assert sorted(body for batch in rest for body in batch) == ["m0", "m1", "m2"]
    assert all(r["attributes"]["ApproximateReceiveCount"] == "2" for e in handler.events[1:] for r in e["Records"])
    assert mapping.stats.batch_failures == 1


def test_an_unknown_item_identifier_fails_the_whole_batch(sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs, visibility_s=1)
    for i in range(2):
        send(sqs, url, f"m{i}")

    def respond(_event: dict[str, Any], number: int) -> Any:
        return {"batchItemFailures": [{"itemIdentifier": "not-a-message-of-the-batch"}] if number == 1 else []}

    handler = RecordingHandler(respond)
    mapping = start(running, mapping_for(sqs, url, handler, report_batch_item_failures=True))
    assert mapping.wait_drained(15)

    assert sorted(handler.delivered()) == ["m0", "m0", "m1", "m1"]
    assert mapping.stats.batch_failures == 1


def test_max_receive_count_moves_a_failing_message_to_the_dead_letter_queue(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    dead_letters = create_queue(sqs)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = create_queue(sqs, visibility_s=1,
                       RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}))
    send(sqs, url, "poison")

    def respond(_event: dict[str, Any], _n: int) -> Any:
        raise RuntimeError("cannot deliver")

    handler = RecordingHandler(respond)
    mapping = start(running, mapping_for(sqs, url, handler))
    assert mapping.wait_drained(15)

    assert handler.delivered() == ["poison", "poison"]
    moved = sqs.receive_message(QueueUrl=dead_letters, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in moved] == ["poison"]


# --- FIFO ------------------------------------------------------------------------------


def test_moto_alone_can_return_a_later_message_of_a_group_first(sqs: Any) -> None:
    """Why the mapping keeps its own group order: if this fails, moto got it right."""
    url = create_queue(sqs, fifo=True, visibility_s=2)
    for body in ("a1", "a2", "a3"):
        send(sqs, url, body, group="A")
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    # a1 to be retried in 1 s, a2 and a3 held behind it (back after the 2 s visibility timeout)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"], VisibilityTimeout=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if again:
            break
        time.sleep(0.05)
    assert [m["Body"] for m in again] != ["a1", "a2", "a3"]


def test_a_failed_message_holds_its_group_in_order_while_other_groups_flow(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs, fifo=True, visibility_s=2)
    for body in ("a1", "a2", "a3", "b1"):
        send(sqs, url, body, group=body[0].upper())

    def respond(event: dict[str, Any], _n: int) -> Any:
        # The destination runner's rule: a1's first attempt is retried in 1 s, the later
        # messages of its group are reported without being sent.
        failures: list[str] = []
        held: set[str] = set()
        for record in event["Records"]:
            group = record["attributes"]["MessageGroupId"]
            if group in held:
                failures.append(record["messageId"])
            elif record["body"] == "a1" and record["attributes"]["ApproximateReceiveCount"] == "1":
                sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=record["receiptHandle"],
                                              VisibilityTimeout=1)
                failures.append(record["messageId"])
                held.add(group)
        return {"batchItemFailures": [{"itemIdentifier": f} for f in failures]}

    handler = RecordingHandler(respond)
    mapping = start(running, mapping_for(sqs, url, handler, report_batch_item_failures=True))
    wait_until(lambda: len(handler.events) >= 1)
    for body in ("b2", "b3"):
        send(sqs, url, body, group="B")
    assert mapping.wait_drained(20)

    delivered = handler.delivered()
    assert [b for b in delivered if b.startswith("a")] == ["a1", "a2", "a3", "a1", "a2", "a3"]
    assert [b for b in delivered if b.startswith("b")] == ["b1", "b2", "b3"]
    # group B went on while group A waited for a1's retry
    assert delivered.index("b3") < len(delivered) - 3
    assert handler.bodies()[-1] == ["a1", "a2", "a3"]
    retried_a1 = handler.events[-1]["Records"][0]
    assert retried_a1["attributes"]["ApproximateReceiveCount"] == "2"


def test_two_batches_never_hold_one_group_at_once_and_each_group_stays_in_order(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs, fifo=True)
    groups = [f"g{g}" for g in range(4)]
    for i in range(6):
        for group in groups:
            send(sqs, url, f"{group}-{i}", group=group)
    active: dict[str, int] = {}
    overlaps: list[str] = []
    lock = threading.Lock()

    def respond(event: dict[str, Any], _n: int) -> Any:
        mine = {r["attributes"]["MessageGroupId"] for r in event["Records"]}
        with lock:
            overlaps.extend(g for g in mine if active.get(g))
            for g in mine:
                active[g] = active.get(g, 0) + 1
        time.sleep(0.05)
        with lock:
            for g in mine:
                active[g] -= 1
        return None

    handler = RecordingHandler(respond)
    mapping = start(running, mapping_for(sqs, url, handler, batch_size=3, max_concurrency=4))
    assert mapping.wait_drained(20)

    assert overlaps == []
    delivered = handler.delivered()
    for group in groups:
        assert [b for b in delivered if b.startswith(f"{group}-")] == [f"{group}-{i}" for i in range(6)]
    assert len(handler.events) > 1


# --- batching window, idle and drained ---------------------------------------------------


def test_the_batching_window_gathers_a_standard_queue_into_one_invocation(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs)
    handler = RecordingHandler()
    mapping = start(running, mapping_for(sqs, url, handler, batch_size=100, max_batching_window_s=1.5))
    for i in range(5):
        send(sqs, url, f"m{i}")
        time.sleep(0.1)
    assert mapping.wait_drained(10)

    assert [sorted(batch) for batch in handler.bodies()] == [[f"m{i}" for i in range(5)]]


def test_a_full_batch_does_not_wait_for_the_window(sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs)
    for i in range(20):
        send(sqs, url, f"m{i}")
    handler = RecordingHandler()
    started = time.monotonic()
    mapping = start(running, mapping_for(sqs, url, handler, batch_size=20, max_batching_window_s=30))
    assert mapping.wait_drained(10)

    assert time.monotonic() - started < 10
    assert [len(batch) for batch in handler.bodies()] == [20]


def test_idle_ignores_a_retry_waiting_out_its_delay_and_drained_waits_for_it(
        sqs: Any, running: list[SqsEventSourceMapping]) -> None:
    url = create_queue(sqs, visibility_s=30)
    send(sqs, url, "m0")

    def respond(event: dict[str, Any], number: int) -> Any:
        if number > 1:
            return None
        record = event["Records"][0]
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=2)
        return {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}

    handler = RecordingHandler(respond)
    mapping = start(running, mapping_for(sqs, url, handler, report_batch_item_failures=True))
    wait_until(lambda: len(handler.events) == 1)
    assert mapping.wait_idle(1.5)
    assert len(handler.events) == 1
    assert mapping.queue_depth() == 1

    assert mapping.wait_drained(10)
    assert handler.delivered() == ["m0", "m0"]
    assert mapping.queue_depth() == 0
