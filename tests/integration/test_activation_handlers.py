"""The activation functions on moto, invoked as Lambda invokes them: the router with the
memberships table's stream records (and an event-stream record), the destination function
with its FIFO queue's SQS batch, delivering to a webhook receiver on 127.0.0.1 whose
signing secret is in Secrets Manager."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from cdp import resources
from cdp.activation.destinations import DestinationConfig
from cdp.activation.webhook_signing import SIGNATURE_HEADER, verify
from cdp.aws.delivery_log import hour_of
from cdp.aws.membership_store import MembershipStore
from cdp.config import get_settings
from cdp.local.activation import LocalActivation
from cdp.local.dynamodb_esm import dynamodb_streams_client, latest_stream_arn
from cdp.segmentation.audience_events import audience_message_id
from cdp.segmentation.membership import Decision
from tests.conftest import load_handler
from tests.profile_layout import moto_writer

PREFIX = "test-dest-"
SECRET_NAME = "cdp/webhooks/crm"
SECRET = "whsec-test-signing-value"


class Receiver:
    """A webhook endpoint on 127.0.0.1: records each request, answers by the body's profile."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.busy_profiles: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(({k: v for k, v in self.headers.items()}, body))
                busy = json.loads(body).get("profile_id") in receiver.busy_profiles
                self.send_response(503 if busy else 200)
                if busy:
                    self.send_header("Retry-After", "30")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/cdp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def destinations(url: str) -> list[DestinationConfig]:
    return [
        DestinationConfig.model_validate({
            "id": "crm-webhook", "name": "CRM webhook", "type": "webhook",
            "settings": {"url": url, "secret_name": SECRET_NAME}, "audiences": ["vip"],
            "triggers": [{"name": "Bought", "event": "Order Completed"}],
            "field_mapping": {"plan": "Plan"}}),
        DestinationConfig.model_validate({
            "id": "exports", "name": "Exports", "type": "s3", "settings": {"bucket": "cdp-exports"},
            "audiences": ["vip", "churn-risk"]}),
    ]


def _clear_caches(*modules: ModuleType) -> None:
    get_settings.cache_clear()
    for module in modules:
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", "") == module.__name__:
                value.cache_clear()


@pytest.fixture
def activation(aws: None, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[LocalActivation]:
    """The deployment's activation resources on moto: destinations file, queues, secret."""
    local = LocalActivation(boto3.session.Session(), destinations(receiver.url),
                            destinations_file=tmp_path / "destinations.json", secrets={SECRET_NAME: SECRET},
                            prefix=PREFIX)
    local.provision()
    monkeypatch.setenv(resources.DESTINATIONS_FILE_ENV, str(local.destinations_file))
    monkeypatch.setenv(resources.DESTINATION_QUEUE_PREFIX_ENV, PREFIX)
    monkeypatch.delenv(resources.DESTINATION_ID_ENV, raising=False)
    handlers = [load_handler("activation_router"), load_handler("destination")]
    _clear_caches(*handlers)
    yield local
    _clear_caches(*handlers)
    for name in ("cdp_fn_activation_router", "cdp_fn_destination"):
        sys.modules.pop(name, None)  # their clients were made inside this test's moto


def memberships_stream_event() -> dict[str, Any]:
    """Everything on the memberships table's stream, as Lambda's DynamoDB Streams event."""
    streams = dynamodb_streams_client()
    arn = latest_stream_arn(boto3.client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for record in streams.get_records(ShardIterator=iterator)["Records"]:
            created = record["dynamodb"].get("ApproximateCreationDateTime")
            if isinstance(created, datetime):  # boto3 parses it; Lambda's event has epoch seconds
                record["dynamodb"]["ApproximateCreationDateTime"] = int(created.timestamp())
            records.append({**record, "eventSourceARN": arn})
    return {"Records": records}


def kinesis_event(*events: dict[str, Any]) -> dict[str, Any]:
    return {"Records": [{
        "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": str(e.get("userId")), "sequenceNumber": str(n),
                    "data": base64.b64encode(json.dumps({"v": 1, "kind": "event", "source_id": "src_web",
                                                         "event": e}).encode()).decode(),
                    "approximateArrivalTimestamp": 1764583200.0},
        "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": f"shardId-000000000000:{n}",
        "eventName": "aws:kinesis:record", "awsRegion": "us-east-1",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/router",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/cdp-events"} for n, e in enumerate(events)]}


def queue_messages(url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    found: list[dict[str, Any]] = []
    while page := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                      MessageAttributeNames=["All"]).get("Messages", []):
        found += page
    return found


def sqs_event(messages: list[dict[str, Any]], queue_name: str) -> dict[str, Any]:
    """Lambda's SQS event of received messages (events/sqs_fifo_destination_batch.json's shape)."""
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs", "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue_name}",
        "awsRegion": "us-east-1"} for m in messages]}


def write_people() -> None:
    writer = moto_writer()
    writer.profile("prof_ana", ["user_id:ana", "email:ana@example.com"],
                   traits={"plan": ("pro", "2026-12-01T10:00:00.000Z", "m1"),
                           "email": ("ana@example.com", "2026-12-01T10:00:00.000Z", "m1")})
    writer.profile("prof_bob", ["user_id:bob", "email:bob@example.com"],
                   traits={"plan": ("free", "2026-12-01T10:00:00.000Z", "m2")})


def enter(profile_id: str, audience: str, version: int) -> None:
    """An entry as the segment evaluator writes it."""
    store = MembershipStore(boto3.client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)
    store.apply(profile_id, [Decision(audience, True, "entered", version, "2026-12-06T11:59:58.000Z")],
                store.of_profile(profile_id))


def test_the_router_puts_entries_and_trigger_events_on_the_destinations_queues(
        activation: LocalActivation, lambda_context: Any) -> None:
    write_people()
    enter("prof_ana", "vip", 3)
    enter("prof_bob", "churn-risk", 5)
    enter("prof_bob", "unlisted", 5)
    router = load_handler("activation_router")

    assert router.handler(memberships_stream_event(), lambda_context) == {"routed": 3}
    events = kinesis_event(
        {"type": "track", "event": "Order Completed", "userId": "ana", "messageId": "evt-1",
         "writeKey": "secret-write-key", "receivedAt": "2026-12-06T12:00:00.000Z"},
        {"type": "track", "event": "Page Scrolled", "userId": "ana", "messageId": "evt-2"},
        {"type": "track", "event": "Order Completed", "userId": "ana", "messageId": "evt-3"},
        {"type": "track", "event": "Order Completed", "userId": "ana", "messageId": "evt-4"},
    )
    # a record the collector rejected, and one that is not JSON: the consumer's business, not the router's
    events["Records"][2]["kinesis"]["data"] = base64.b64encode(json.dumps(
        {"v": 1, "kind": "rejected", "source_id": "src_web", "event": {"type": "track"}}).encode()).decode()
    events["Records"][3]["kinesis"]["data"] = base64.b64encode(b"\xff not json").decode()
    assert router.handler(events, lambda_context) == {"routed": 1}

    webhook = queue_messages(activation.queue_urls["crm-webhook"])
    bodies = [json.loads(m["Body"]) for m in webhook]
    assert [(b["kind"], b["profile_id"]) for b in bodies] == [("audience_membership", "prof_ana"),
                                                              ("event", "prof_ana")]
    assert bodies[0]["transition"] == "entered" and bodies[0]["version"] == 3
    assert webhook[0]["Attributes"]["MessageGroupId"] == "prof_ana"
    assert webhook[0]["Attributes"]["MessageDeduplicationId"] == audience_message_id("vip", "prof_ana", "entered", 3)
    assert webhook[1]["Attributes"]["MessageDeduplicationId"] == "crm-webhook:evt-1"
    assert "writeKey" not in bodies[1]["event"]
    exports = [json.loads(m["Body"]) for m in queue_messages(activation.queue_urls["exports"])]
    assert sorted((b["profile_id"], b["audience_id"]) for b in exports) == [("prof_ana", "vip"),
                                                                           ("prof_bob", "churn-risk")]


def test_the_destination_function_delivers_its_batch_signed_with_profiles_and_logs_it(
        activation: LocalActivation, receiver: Receiver, lambda_context: Any) -> None:
    write_people()
    enter("prof_ana", "vip", 3)
    enter("prof_bob", "vip", 4)
    load_handler("activation_router").handler(memberships_stream_event(), lambda_context)
    receiver.busy_profiles.add("prof_bob")
    messages = queue_messages(activation.queue_urls["crm-webhook"])
    queue_name = resources.destination_queue_name(PREFIX, "crm-webhook", "webhook")
    event = sqs_event(messages, queue_name)
    by_profile = {json.loads(r["body"])["profile_id"]: r["messageId"] for r in event["Records"]}
    started = time.time()

    response = load_handler("destination").handler(event, lambda_context)
    hours = {hour_of(datetime.fromtimestamp(started, UTC)), hour_of(datetime.now(UTC))}

    assert response == {"batchItemFailures": [{"itemIdentifier": by_profile["prof_bob"]}]}
    assert len(receiver.requests) == 2
    headers, raw = next((h, b) for h, b in receiver.requests if json.loads(b)["profile_id"] == "prof_ana")
    assert verify(headers[SIGNATURE_HEADER], raw, [SECRET.encode()], now=started)
    assert headers["Idempotency-Key"] == audience_message_id("vip", "prof_ana", "entered", 3)
    delivered = json.loads(raw)
    assert delivered["profile"] == {"profile_id": "prof_ana", "fields": {"Plan": "pro"},
                                    "traits": {"email": "ana@example.com", "plan": "pro"},
                                    "identifiers": {"email": ["ana@example.com"], "user_id": ["ana"]}}
    # the retried message comes back after the receiver's Retry-After, not at once
    assert queue_messages(activation.queue_urls["crm-webhook"]) == []

    log = boto3.resource("dynamodb").Table(resources.DELIVERY_LOG_TABLE.local_name)
    (item,) = log.scan()["Items"]
    assert item["destination_id"] == "crm-webhook"
    assert item["hour"] in hours
    assert (item["attempts"], item["delivered"], item["retried"]) == (2, 1, 1)
    assert item["last_error"].startswith("HTTP 503")
