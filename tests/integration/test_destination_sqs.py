"""The SQS destination on moto (standard and FIFO queues: bodies, groups, deduplication,
batching by 10) and with scripted answers (per-entry and whole-request errors)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from cdp.activation import sqs_destination
from cdp.activation.delivery import OutboundMessage
from cdp.activation.destinations import DestinationConfig
from cdp.activation.sqs_destination import SqsDestination

PROFILE = {"profile_id": "p0", "traits": {"email": "Ana@Example.com", "plan": "pro"},
           "identifiers": {"email": ["ana@example.com"]}, "fields": {"Plan": "pro"}}


def change(n: int, profile: dict[str, Any] | None = None, transition: str = "entered") -> OutboundMessage:
    return OutboundMessage(f"pro|p{n}|{transition}|1", {
        "kind": "audience_membership", "destination_id": "q", "message_id": f"m{n}-{transition}",
        "audience_id": "pro", "profile_id": f"p{n}", "transition": transition,
        "event": "Audience Entered" if transition == "entered" else "Audience Exited", "version": 1,
        "at": "2026-12-06T12:00:00Z", "profile": profile})


def received(sqs: Any, queue: str, attributes: bool = False) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    extra = {"MessageSystemAttributeNames": ["All"]} if attributes else {}
    while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, **extra).get("Messages", []):
        seen.extend(batch)
        for m in batch:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    return seen


def test_messages_arrive_on_a_standard_queue_10_a_request_without_the_profile() -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue = sqs.create_queue(QueueName="customer")["QueueUrl"]
        calls: list[dict[str, Any]] = []
        sqs.meta.events.register("before-parameter-build.sqs.SendMessageBatch",
                                 lambda params, **_: calls.append(params))

        outcomes = SqsDestination(sqs, queue).send([change(n, PROFILE) for n in range(23)])

        assert all(o.delivered for o in outcomes) and len(outcomes) == 23
        assert [len(c["Entries"]) for c in calls] == [10, 10, 3]
        assert all("MessageGroupId" not in e for c in calls for e in c["Entries"])
        bodies = [json.loads(m["Body"]) for m in received(sqs, queue)]
        assert sorted(b["profile_id"] for b in bodies) == sorted(f"p{n}" for n in range(23))
        assert all("profile" not in b and "fields" not in b for b in bodies)
        assert "Ana@Example.com" not in json.dumps(bodies)


def test_fifo_messages_are_grouped_by_profile_and_deduplicated_by_the_message_id() -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue = sqs.create_queue(QueueName="customer.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
        destination = SqsDestination(sqs, queue, include_fields=True)
        odd = OutboundMessage("e1", {"kind": "event", "message_id": "e1", "profile_id": "ana smith ü",
                                     "event": {"type": "track", "event": "Clicked"}, "profile": PROFILE})
        batch = [change(1, PROFILE), change(2, None), change(1, PROFILE, "exited"), odd]

        assert all(o.delivered for o in destination.send(batch))
        assert all(o.delivered for o in destination.send(batch[:2]))  # a retried attempt: dropped by SQS

        seen = received(sqs, queue, attributes=True)
        assert len(seen) == 4
        by_id = {json.loads(m["Body"])["message_id"]: m for m in seen}
        entered, exited = by_id["m1-entered"], by_id["m1-exited"]
        assert entered["Attributes"]["MessageGroupId"] == exited["Attributes"]["MessageGroupId"] == "p1"
        assert entered["Attributes"]["MessageDeduplicationId"] == "pro|p1|entered|1"
        assert [json.loads(m["Body"])["message_id"] for m in seen if m["Attributes"]["MessageGroupId"] == "p1"] \
            == ["m1-entered", "m1-exited"]  # a profile's messages in order
        # an id SQS refuses (space, non-ASCII) becomes a stable hash
        assert by_id["e1"]["Attributes"]["MessageGroupId"].startswith("h:")
        body = json.loads(entered["Body"])
        assert body["fields"] == {"Plan": "pro"} and "profile" not in body
        assert json.loads(by_id["m2-entered"]["Body"])["fields"] == {}  # the profile no longer exists
        assert "Ana@Example.com" not in json.dumps([m["Body"] for m in seen])


class Sqs:
    """SendMessageBatch answers scripted per call (moto does not fail entries)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[list[dict[str, Any]]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Entries)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_entry_failures_are_dead_lettered_when_the_sender_is_at_fault_and_retried_otherwise() -> None:
    answer = {"Successful": [{"Id": "0", "MessageId": "x"}], "Failed": [
        {"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "try again"},
        {"Id": "2", "SenderFault": True, "Code": "InvalidMessageContents", "Message": "bad body p2"}]}
    outcomes = SqsDestination(Sqs(answer), "https://sqs.us-east-1.amazonaws.com/1/q").send(
        [change(0), change(1), change(2), change(3)])
    assert [o.verdict for o in outcomes] == ["delivered", "retry", "permanent", "retry"]
    assert outcomes[2].reason == "SendMessageBatch entry: InvalidMessageContents"
    assert outcomes[3].reason == "SendMessageBatch entry: no result"


@pytest.mark.parametrize(("code", "status", "verdict"), [
    ("ThrottlingException", 400, "retry"), ("RequestThrottled", 403, "retry"), ("InternalError", 500, "retry"),
    ("ServiceUnavailable", 503, "retry"), ("KmsThrottled", 400, "retry"),
    ("AccessDenied", 403, "permanent"), ("QueueDoesNotExist", 400, "permanent"),
    ("AWS.SimpleQueueService.NonExistentQueue", 400, "permanent"), ("KmsAccessDenied", 400, "permanent"),
    ("KmsDisabled", 400, "permanent"),
])
def test_a_failed_request_decides_for_all_its_entries_naming_the_code_only(code: str, status: int,
                                                                         verdict: str) -> None:
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/secret-queue"
    error = ClientError({"Error": {"Code": code, "Message": f"queue {url} is not yours"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessageBatch")
    outcomes = SqsDestination(Sqs(error), url).send([change(0), change(1)])
    assert [o.verdict for o in outcomes] == [verdict, verdict]
    assert outcomes[0].reason == f"SendMessageBatch: {code}"


def test_a_message_over_256_kb_is_dead_lettered_unsent_and_requests_stay_under_256_kb() -> None:
    big = OutboundMessage("big", {"kind": "event", "message_id": "big", "padding": "x" * (256 * 1024)})
    half = [OutboundMessage(f"h{n}", {"kind": "event", "message_id": f"h{n}", "padding": "y" * (100 * 1024)})
            for n in range(3)]
    fake = Sqs(*[{"Successful": [{"Id": str(n)} for n in range(5)]}] * 3)
    outcomes = SqsDestination(fake, "https://sqs.us-east-1.amazonaws.com/1/q").send([big, *half, change(9)])
    assert [o.verdict for o in outcomes] == ["permanent", "delivered", "delivered", "delivered", "delivered"]
    assert outcomes[0].reason == "message over SQS's 256 KB"
    assert [[e["Id"] for e in call] for call in fake.calls] == [["1", "2"], ["3", "4"]]
    assert all(sum(len(e["MessageBody"].encode()) for e in call) <= 256 * 1024 for call in fake.calls)


def test_build_reads_the_queue_and_whether_fields_are_mapped() -> None:
    config = DestinationConfig.model_validate({
        "id": "ops-queue", "name": "Ops queue", "type": "sqs", "audiences": ["pro"],
        "field_mapping": {"plan": "Plan"},
        "settings": {"queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/ops.fifo"}})
    asked: list[str] = []
    destination = sqs_destination.build(config, lambda name: "", lambda service: asked.append(service) or "client")
    assert isinstance(destination, SqsDestination)
    assert asked == ["sqs"] and destination.include_fields and destination.fifo
    assert destination.queue_url.endswith("/ops.fifo")
