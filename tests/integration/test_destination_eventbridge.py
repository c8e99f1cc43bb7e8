"""The EventBridge destination on moto: entries on the customer's bus (seen through a rule
into an SQS queue), batching by 10, and what per-entry and whole-request errors mean."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from cdp.activation.delivery import OutboundMessage
from cdp.activation.eventbridge import EventBridgeDestination


def change(n: int) -> OutboundMessage:
    return OutboundMessage(f"m{n}", {"kind": "audience_membership", "message_id": f"m{n}", "audience_id": "pro",
                                     "profile_id": f"p{n}", "event": "Audience Entered", "at": "2026-12-06T12:00:00Z"})


def test_messages_arrive_on_the_customers_bus_as_audience_events() -> None:
    with mock_aws():
        events, sqs = boto3.client("events", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        events.create_event_bus(Name="customer-bus")
        queue = sqs.create_queue(QueueName="seen")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="all-cdp", EventBusName="customer-bus", EventPattern=json.dumps({"source": ["cdp"]}))
        events.put_targets(Rule="all-cdp", EventBusName="customer-bus", Targets=[{"Id": "q", "Arn": arn}])
        calls: list[int] = []
        client = boto3.client("events", region_name="us-east-1")
        client.meta.events.register("before-parameter-build.events.PutEvents",
                                    lambda params, **_: calls.append(len(params["Entries"])))

        outcomes = EventBridgeDestination(client, "customer-bus").send([change(n) for n in range(23)])

        assert all(o.delivered for o in outcomes) and len(outcomes) == 23
        assert calls == [10, 10, 3]
        seen: list[dict[str, Any]] = []
        while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
            seen.extend(json.loads(m["Body"]) for m in batch)
            for m in batch:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        assert len(seen) == 23
        assert {e["detail-type"] for e in seen} == {"Audience Entered"} and {e["source"] for e in seen} == {"cdp"}
        assert sorted(e["detail"]["profile_id"] for e in seen) == sorted(f"p{n}" for n in range(23))


class Events:
    """PutEvents answers scripted per call (moto does not fail entries)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_entry_errors_are_retried_or_dead_lettered_by_their_code() -> None:
    answer = {"FailedEntryCount": 2, "Entries": [
        {"EventId": "e1"}, {"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"},
        {"ErrorCode": "MalformedDetail", "ErrorMessage": "Detail is malformed."}]}
    outcomes = EventBridgeDestination(Events(answer), "bus").send([change(0), change(1), change(2)])
    assert [o.verdict for o in outcomes] == ["delivered", "retry", "permanent"]
    assert outcomes[2].reason == "PutEvents entry: MalformedDetail: Detail is malformed."


@pytest.mark.parametrize(("code", "verdict"), [("ThrottlingException", "retry"), ("AccessDeniedException", "permanent"),
                                               ("ResourceNotFoundException", "permanent")])
def test_a_failed_request_decides_for_all_its_entries(code: str, verdict: str) -> None:
    error = ClientError({"Error": {"Code": code, "Message": "no"}}, "PutEvents")
    outcomes = EventBridgeDestination(Events(error), "bus").send([change(0), change(1)])
    assert [o.verdict for o in outcomes] == [verdict, verdict] and outcomes[0].reason == f"PutEvents: {code}"


def test_an_entry_over_256_kb_is_dead_lettered_without_being_sent() -> None:
    big = OutboundMessage("big", {"event": "Audience Entered", "padding": "x" * (256 * 1024)})
    outcomes = EventBridgeDestination(Events({"Entries": [{"EventId": "e1"}]}), "bus").send([big, change(1)])
    assert [o.verdict for o in outcomes] == ["permanent", "delivered"]
