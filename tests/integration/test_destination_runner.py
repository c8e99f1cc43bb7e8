"""A destination Lambda's batch on moto's SQS FIFO queues: delivered, retried later (and the
profile's later messages held behind it), dead-lettered with the reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp.activation.delivery import OutboundMessage, Outcome, RetryPolicy
from cdp.activation.runner import deliver_records
from cdp.aws.destination_queues import DestinationQueues

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class ScriptedDestination:
    """Answers by the message body's ``answer``; records what was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes = []
        for message in messages:
            self.sent.append(str(message.body["id"]))
            answer = message.body["answer"]
            outcomes.append(Outcome("delivered") if answer == "ok" else
                            Outcome("retry", "HTTP 503", 30.0) if answer == "busy" else
                            Outcome("permanent", "HTTP 400: unknown field"))
        return outcomes


@pytest.fixture
def queues() -> Any:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        fifo = {"FifoQueue": "true"}
        queue = sqs.create_queue(QueueName="cdp-dest-webhook.fifo", Attributes=fifo)["QueueUrl"]
        dead = sqs.create_queue(QueueName="cdp-dest-webhook-dlq.fifo", Attributes=fifo)["QueueUrl"]
        yield sqs, queue, dead


def send(sqs: Any, queue: str, profile: str, message_id: str, answer: str) -> None:
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"id": message_id, "answer": answer}),
                     MessageGroupId=profile, MessageDeduplicationId=f"dedup-{message_id}")


def lambda_records(sqs: Any, queue: str) -> list[dict[str, Any]]:
    """What Lambda's SQS event source hands the function (the record shape of its event)."""
    found = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    return [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
             "attributes": m["Attributes"], "eventSource": "aws:sqs"} for m in found]


def test_a_batch_is_delivered_retried_in_order_per_profile_and_dead_lettered_with_reasons(queues: Any) -> None:
    sqs, queue, dead = queues
    send(sqs, queue, "p1", "enter-p1", "busy")
    send(sqs, queue, "p1", "exit-p1", "ok")
    send(sqs, queue, "p2", "enter-p2", "ok")
    send(sqs, queue, "p3", "enter-p3", "bad")
    records = lambda_records(sqs, queue)
    by_id = {json.loads(r["body"])["id"]: r["messageId"] for r in records}
    destination = ScriptedDestination()

    # (the clock is the real one: moto stamps ApproximateFirstReceiveTimestamp with it)
    result = deliver_records(records, destination, DestinationQueues(sqs, queue, dead), RetryPolicy())

    # p1's exit is not sent while its enter waits for a retry; p2 and p3 go on.
    assert sorted(destination.sent) == ["enter-p1", "enter-p2", "enter-p3"]
    assert result.response() == {"batchItemFailures": [{"itemIdentifier": by_id["enter-p1"]},
                                                       {"itemIdentifier": by_id["exit-p1"]}]}
    assert (result.delivered, result.retried, result.held, result.dead_lettered) == (1, 1, 1, 1)
    (letter,) = sqs.receive_message(QueueUrl=dead, MessageAttributeNames=["All"],
                                    AttributeNames=["All"])["Messages"]
    assert json.loads(letter["Body"])["id"] == "enter-p3"
    assert letter["MessageAttributes"]["reason"]["StringValue"] == "permanent failure: HTTP 400: unknown field"
    assert letter["Attributes"]["MessageGroupId"] == "p3"


def test_a_message_retried_past_the_window_is_dead_lettered() -> None:
    first = int((NOW - timedelta(hours=5)).timestamp() * 1000)
    record = {"messageId": "m1", "receiptHandle": "r1", "body": json.dumps({"id": "enter-p1", "answer": "busy"}),
              "attributes": {"ApproximateReceiveCount": "41", "ApproximateFirstReceiveTimestamp": str(first),
                             "MessageGroupId": "p1", "MessageDeduplicationId": "d1"}}
    letters: list[tuple[str, str]] = []
    retries: list[float] = []

    class Queues:
        def retry_later(self, receipt_handle: str, delay_s: float) -> None:
            retries.append(delay_s)

        def dead_letter(self, record: Any, reason: str) -> None:
            letters.append((record["messageId"], reason))

    result = deliver_records([record], ScriptedDestination(), Queues(), RetryPolicy(), now=NOW)

    assert result.response() == {"batchItemFailures": []} and retries == []
    assert letters == [("m1", "retry window of 4 h exhausted after 41 attempt(s); last: HTTP 503")]


def test_an_unreadable_message_and_a_failing_destination() -> None:
    letters: list[str] = []
    retries: list[float] = []

    class Queues:
        def retry_later(self, receipt_handle: str, delay_s: float) -> None:
            retries.append(delay_s)

        def dead_letter(self, record: Any, reason: str) -> None:
            letters.append(reason)

    class Broken:
        def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
            raise ConnectionError("boom")

    attributes = {"ApproximateReceiveCount": "1", "MessageGroupId": "p1"}
    records = [{"messageId": "bad", "receiptHandle": "r0", "body": "not json", "attributes": attributes},
               {"messageId": "m1", "receiptHandle": "r1", "body": "{}", "attributes": attributes}]
    result = deliver_records(records, Broken(), Queues(), RetryPolicy(), now=NOW)
    assert letters == ["unreadable message: JSONDecodeError"]
    assert result.failures == ["m1"] and len(retries) == 1 and 0 <= retries[0] <= 5
