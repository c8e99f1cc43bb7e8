"""Activation's AWS adapters on moto: the destination queues (router's sender, runner's
retry and dead letter), destination secrets, the delivery log table, and profile reads."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp import resources
from cdp.activation.delivery_log import COUNTERS, DeliveryCounts, bucket_name, bucket_of
from cdp.activation.destinations import DestinationConfig
from cdp.activation.dispatch import Person
from cdp.activation.router import Routed
from cdp.aws.activation_profiles import ActivationProfiles
from cdp.aws.delivery_log import DeliveryLog, hour_of
from cdp.aws.destination_queues import (
    MAX_BATCH_BYTES,
    MAX_VISIBILITY_S,
    DestinationQueues,
    DestinationQueueSender,
    QueueSendFailed,
)
from cdp.aws.membership_store import MembershipStore
from cdp.aws.secrets import SecretReader
from cdp.local.provisioning import create_table_request
from cdp.resources import destination_queue_name
from cdp.segmentation.membership import Decision
from tests.profile_layout import moto_writer

PREFIX = "cdp-dest-"
NOW = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)


@pytest.fixture
def moto() -> Iterator[None]:
    with mock_aws():
        yield


def destination(id_: str, type_: str) -> DestinationConfig:
    settings = {"webhook": {"url": "https://example.com/cdp", "secret_name": "cdp/hooks"},
                "s3": {"bucket": "cdp-exports"}}[type_]
    return DestinationConfig.model_validate({"id": id_, "name": id_, "type": type_, "settings": settings,
                                             "audiences": ["vip"]})


def routed(n: int, group: str = "p1") -> Routed:
    return Routed("d", group, f"dedup-{n}", {"kind": "audience_membership", "n": n, "profile_id": group})


class CountingSqs:
    """moto's SQS client, counting the calls made through it."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.calls: Counter[str] = Counter()
        self.batches: list[list[dict[str, Any]]] = []

    def get_queue_url(self, **kwargs: Any) -> Any:
        self.calls["get_queue_url"] += 1
        return self._sqs.get_queue_url(**kwargs)

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.calls["send_message_batch"] += 1
        self.batches.append(kwargs["Entries"])
        return self._sqs.send_message_batch(**kwargs)


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                   MessageAttributeNames=["All"]).get("Messages", [])
        if not page:
            return found
        found += page
        for message in page:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


# --- the router's sender -------------------------------------------------------------------

def test_the_sender_finds_each_queue_once_and_sends_in_chunks_of_ten_with_fifo_ids(moto: None) -> None:
    sqs = boto3.client("sqs")
    hooks = destination("hooks", "webhook")
    url = sqs.create_queue(QueueName=destination_queue_name(PREFIX, "hooks", "webhook"),
                           Attributes={"FifoQueue": "true"})["QueueUrl"]
    counting = CountingSqs(sqs)
    sender = DestinationQueueSender(counting, PREFIX)

    sender.send(hooks, [routed(n, f"p{n % 3}") for n in range(23)])
    sender.send(hooks, [routed(100)])

    assert counting.calls == {"get_queue_url": 1, "send_message_batch": 4}
    assert [len(b) for b in counting.batches] == [10, 10, 3, 1]
    assert [e["Id"] for e in counting.batches[0]] == [str(n) for n in range(10)]
    received = drain(sqs, url)
    assert len(received) == 24
    by_n = {json.loads(m["Body"])["n"]: m for m in received}
    assert by_n[4]["Attributes"]["MessageGroupId"] == "p1"
    assert by_n[4]["Attributes"]["MessageDeduplicationId"] == "dedup-4"
    assert by_n[4]["Body"] == '{"kind":"audience_membership","n":4,"profile_id":"p1"}'  # compact JSON


def test_triggered_events_near_the_event_size_limit_are_split_by_request_size(moto: None) -> None:
    sqs = boto3.client("sqs")
    hooks = destination("hooks", "webhook")
    url = sqs.create_queue(QueueName=destination_queue_name(PREFIX, "hooks", "webhook"),
                           Attributes={"FifoQueue": "true", "MaximumMessageSize": str(MAX_BATCH_BYTES)})["QueueUrl"]
    counting = CountingSqs(sqs)
    big = [Routed("d", "p1", f"dedup-{n}", {"kind": "event", "n": n, "event": {"properties": {"text": "x" * 31_000}}})
           for n in range(12)]

    DestinationQueueSender(counting, PREFIX).send(hooks, big)

    sizes = [sum(len(e["MessageBody"].encode()) for e in batch) for batch in counting.batches]
    assert all(size <= MAX_BATCH_BYTES for size in sizes), sizes
    assert [len(b) for b in counting.batches] == [8, 4]  # 8 x ~31 KB fit in 256 KiB, the 9th does not
    assert [e["Id"] for e in counting.batches[1]] == ["0", "1", "2", "3"]
    assert sorted(json.loads(m["Body"])["n"] for m in drain(sqs, url)) == list(range(12))


def test_a_standard_queue_gets_no_fifo_ids(moto: None) -> None:
    sqs = boto3.client("sqs")
    sqs.create_queue(QueueName=destination_queue_name(PREFIX, "export", "s3"))
    counting = CountingSqs(sqs)

    DestinationQueueSender(counting, PREFIX).send(destination("export", "s3"), [routed(1), routed(2)])

    assert all(set(e) == {"Id", "MessageBody"} for e in counting.batches[0])


def test_a_missing_queue_fails_the_send(moto: None) -> None:
    with pytest.raises(boto3.client("sqs").exceptions.QueueDoesNotExist):
        DestinationQueueSender(boto3.client("sqs"), PREFIX).send(destination("nowhere", "webhook"), [routed(1)])


def test_refused_entries_raise_with_their_codes_only() -> None:
    class Refusing:
        def get_queue_url(self, QueueName: str) -> dict[str, str]:
            return {"QueueUrl": f"https://sqs.example/{QueueName}"}

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            return {"Successful": [{"Id": "0"}], "Failed": [
                {"Id": "1", "Code": "InvalidParameterValue", "SenderFault": True, "Message": "p1@example.com"},
                {"Id": "2", "Code": "InternalError", "SenderFault": False}]}

    with pytest.raises(QueueSendFailed) as raised:
        DestinationQueueSender(Refusing(), PREFIX).send(destination("hooks", "webhook"), [routed(n) for n in range(3)])
    assert str(raised.value) == "2 message(s) to destination 'hooks' refused: InternalError, InvalidParameterValue"


# --- the runner's retry and dead letter ----------------------------------------------------

def fifo_pair(sqs: Any, name: str = "hooks") -> tuple[str, str]:
    fifo = {"FifoQueue": "true"}
    queue = sqs.create_queue(QueueName=destination_queue_name(PREFIX, name, "webhook"), Attributes=fifo)["QueueUrl"]
    dead = sqs.create_queue(QueueName=destination_queue_name(PREFIX, name, "webhook", dead_letter=True),
                            Attributes=fifo)["QueueUrl"]
    return queue, dead


def lambda_record(message: dict[str, Any]) -> dict[str, Any]:
    return {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
            "attributes": message["Attributes"], "messageAttributes": {}, "eventSource": "aws:sqs"}


def test_retry_later_hides_the_message_for_the_delay(moto: None) -> None:
    sqs = boto3.client("sqs")
    queue, dead = fifo_pair(sqs)
    sqs.send_message(QueueUrl=queue, MessageBody="{}", MessageGroupId="p1", MessageDeduplicationId="d1")
    (message,) = sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0)["Messages"]

    DestinationQueues(sqs, queue, dead).retry_later(message["ReceiptHandle"], 120.2)

    assert sqs.receive_message(QueueUrl=queue).get("Messages", []) == []
    assert sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])[
        "Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_retry_later_clamps_the_delay_to_what_sqs_allows() -> None:
    calls: list[int] = []

    class Sqs:
        def change_message_visibility(self, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:
            calls.append(VisibilityTimeout)

    queues = DestinationQueues(Sqs(), "q", "dlq")
    for delay in (0.2, -3, 86_400, 59.0):
        queues.retry_later("rh", delay)
    assert calls == [1, 0, MAX_VISIBILITY_S, 59]


def test_dead_letter_keeps_group_dedup_id_body_and_says_why(moto: None) -> None:
    sqs = boto3.client("sqs")
    queue, dead = fifo_pair(sqs)
    sqs.send_message(QueueUrl=queue, MessageBody='{"kind":"event"}', MessageGroupId="p1",
                     MessageDeduplicationId="d1")
    (message,) = sqs.receive_message(QueueUrl=queue, AttributeNames=["All"])["Messages"]
    record = lambda_record(message)

    DestinationQueues(sqs, queue, dead).dead_letter(record, "permanent failure: HTTP 400: " + "x" * 400)
    DestinationQueues(sqs, queue, dead).dead_letter(record, "again")  # a repeat in the window is dropped

    (letter,) = drain(sqs, dead)
    assert letter["Body"] == '{"kind":"event"}'
    assert (letter["Attributes"]["MessageGroupId"], letter["Attributes"]["MessageDeduplicationId"]) == ("p1", "d1")
    attributes = {k: v["StringValue"] for k, v in letter["MessageAttributes"].items()}
    assert attributes["reason"] == ("permanent failure: HTTP 400: " + "x" * 400)[:256]
    assert attributes["source_message_id"] == message["MessageId"] and attributes["attempts"] == "1"


def test_dead_letter_to_a_standard_queue_has_no_group(moto: None) -> None:
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="cdp-dest-export")["QueueUrl"]
    dead = sqs.create_queue(QueueName="cdp-dest-export-dlq")["QueueUrl"]
    record = {"messageId": "m-1", "receiptHandle": "rh", "body": "{}", "attributes": {"ApproximateReceiveCount": "7"}}

    DestinationQueues(sqs, queue, dead).dead_letter(record, "retry window of 4 h exhausted")

    (letter,) = drain(sqs, dead)
    assert "MessageGroupId" not in letter["Attributes"]
    assert letter["MessageAttributes"]["attempts"] == {"DataType": "Number", "StringValue": "7"}


# --- secrets -------------------------------------------------------------------------------

def test_secrets_are_read_by_name_from_secrets_manager_or_ssm_and_cached(moto: None) -> None:
    manager, ssm = boto3.client("secretsmanager"), boto3.client("ssm")
    manager.create_secret(Name="cdp/webhooks/hooks", SecretString="signing-secret-1")
    ssm.put_parameter(Name="/cdp/slack/sales", Value="https://hooks.example/T1", Type="SecureString")
    reader = SecretReader(ssm=ssm, secrets_manager=manager)

    assert reader("cdp/webhooks/hooks") == "signing-secret-1"
    assert reader("/cdp/slack/sales") == "https://hooks.example/T1"  # decrypted

    manager.put_secret_value(SecretId="cdp/webhooks/hooks", SecretString="signing-secret-2")
    ssm.put_parameter(Name="/cdp/slack/sales", Value="https://hooks.example/T2", Type="SecureString",
                      Overwrite=True)
    assert reader("cdp/webhooks/hooks") == "signing-secret-1"  # cached for max_age
    assert reader("/cdp/slack/sales") == "https://hooks.example/T1"

    fresh = SecretReader(ssm=ssm, secrets_manager=manager, max_age=0)
    assert fresh("cdp/webhooks/hooks") == "signing-secret-2"
    assert fresh("/cdp/slack/sales") == "https://hooks.example/T2"


def test_secrets_reader_makes_its_own_clients_when_none_is_given(moto: None) -> None:
    boto3.client("secretsmanager").create_secret(Name="cdp/own", SecretString="s")
    boto3.client("ssm").put_parameter(Name="/cdp/own", Value="p", Type="SecureString")
    reader = SecretReader(max_age=0)
    assert (reader("cdp/own"), reader("/cdp/own")) == ("s", "p")


def test_a_missing_secret_raises(moto: None) -> None:
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        SecretReader(secrets_manager=boto3.client("secretsmanager"))("cdp/nothing")


# --- delivery log --------------------------------------------------------------------------

def delivery_log_table(ddb: Any) -> str:
    ddb.create_table(**create_table_request(resources.DELIVERY_LOG_TABLE))
    return resources.DELIVERY_LOG_TABLE.local_name


counts = DeliveryCounts
LATENCY_BUCKETS = DeliveryCounts().latencies


def test_the_log_adds_each_invocations_counts_to_the_hours_item(moto: None) -> None:
    ddb = boto3.client("dynamodb")
    log = DeliveryLog(ddb, delivery_log_table(ddb))
    first = counts(attempts=3, delivered=2, retried=1, last_error="HTTP 503")
    first.observe_latency(0.1)
    first.observe_latency(0.1)
    second = counts(attempts=2, delivered=1, dead_lettered=1, not_sent=1, last_error="permanent failure: HTTP 400")
    second.observe_latency(7200)

    log.record("hooks", first, NOW)
    log.record("hooks", second, NOW + timedelta(minutes=5))
    log.record("hooks", DeliveryCounts(), NOW)  # nothing to add: no write
    log.record("other", counts(attempts=1, delivered=1), NOW)

    (item,) = log.hours("hooks", NOW - timedelta(hours=1))
    assert item["hour"] == "2026-12-06T12" == hour_of(NOW)
    assert {name: item.get(name, 0) for name in COUNTERS} == {"attempts": 5, "delivered": 3, "retried": 1,
                                                             "dead_lettered": 1, "held": 0, "not_sent": 1}
    assert (item[bucket_name(0)], item[bucket_name(bucket_of(7200))]) == (2, 1)
    assert (item["last_error"], item["last_error_at"]) == ("permanent failure: HTTP 400", "2026-12-06T12:35:00Z")
    assert item["expires_at"] == int((NOW + timedelta(minutes=5, days=90)).timestamp())


def test_the_log_keeps_one_item_per_hour_and_status_sums_the_last_hours(moto: None) -> None:
    ddb = boto3.client("dynamodb")
    log = DeliveryLog(ddb, delivery_log_table(ddb))
    for hours_ago in (30, 23, 2, 0):
        sample = counts(attempts=hours_ago + 1, delivered=hours_ago + 1)
        sample.observe_latency(0.4)
        log.record("hooks", sample, NOW - timedelta(hours=hours_ago))

    assert [i["hour"] for i in log.hours("hooks", NOW - timedelta(hours=48))] == [
        "2026-12-05T06", "2026-12-05T13", "2026-12-06T10", "2026-12-06T12"]
    status = log.status("hooks", hours=24, now=NOW)
    assert status["hours"] == 24
    assert (status["attempts"], status["delivered"]) == (24 + 3 + 1, 24 + 3 + 1)  # not 30 hours ago
    assert status["latency_p50_s"] == 0.5 and status["last_error"] is None
    assert log.status("nobody", now=NOW)["attempts"] == 0


def test_the_log_records_each_sync_run_and_status_shows_each_audiences_last(moto: None) -> None:
    ddb = boto3.client("dynamodb")
    log = DeliveryLog(ddb, delivery_log_table(ddb))
    log.record("meta", counts(attempts=2, delivered=2), NOW)
    log.record_sync("meta", "pro", "stopped", "s1", "deadline", {"adds": 700, "removes": 3, "failed": 1}, NOW)
    log.record_sync("meta", "pro", "done", "s1", None, {"adds": 300, "removes": 0, "failed": 0},
                    NOW + timedelta(minutes=20))
    log.record_sync("meta", "gold", "busy", None, None, {}, NOW - timedelta(hours=2))

    (item,) = log.hours("meta", NOW - timedelta(minutes=1))
    assert (item["attempts"], item["sync_runs"], item["sync_adds"], item["sync_removes"], item["sync_failed"]) == \
        (2, 2, 1_000, 3, 1)
    status = log.status("meta", hours=24, now=NOW + timedelta(minutes=30))
    assert (status["sync_runs"], status["sync_adds"], status["delivered"]) == (3, 1_000, 2)
    assert status["syncs"] == {
        "gold": {"outcome": "busy", "at": "2026-12-06T10:30:00Z", "adds": 0, "removes": 0, "failed": 0},
        "pro": {"outcome": "done", "at": "2026-12-06T12:50:00Z", "sync_id": "s1", "adds": 300, "removes": 0,
                "failed": 0}}


def test_the_log_reads_every_page_of_hours() -> None:
    pages = [{"Items": [{"destination_id": {"S": "d"}, "hour": {"S": "h1"}, "attempts": {"N": "1"}}],
              "LastEvaluatedKey": {"k": {"S": "1"}}},
             {"Items": [{"destination_id": {"S": "d"}, "hour": {"S": "h2"}, "attempts": {"N": "2"}}]}]
    requests: list[dict[str, Any]] = []

    class Ddb:
        def query(self, **request: Any) -> dict[str, Any]:
            requests.append(dict(request))
            return pages[len(requests) - 1]

    items = DeliveryLog(Ddb(), "log").hours("d", NOW)
    assert [(i["hour"], i["attempts"]) for i in items] == [("h1", 1), ("h2", 2)]
    assert "ExclusiveStartKey" not in requests[0] and requests[1]["ExclusiveStartKey"] == {"k": {"S": "1"}}


def test_concurrent_invocations_only_add(moto_endpoint: str) -> None:
    """Against moto's server (one request at a time, as DynamoDB is atomic per item)."""
    ddb = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
    table = f"delivery-log-{uuid.uuid4().hex}"
    ddb.create_table(**{**create_table_request(resources.DELIVERY_LOG_TABLE), "TableName": table})
    errors: list[BaseException] = []

    def invocation(n: int) -> None:
        try:
            client = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1")
            sample = counts(attempts=2, delivered=1, retried=1, last_error=f"HTTP 50{n % 4}")
            sample.observe_latency(n % 3)
            DeliveryLog(client, table).record("hooks", sample, NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=invocation, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    (item,) = DeliveryLog(ddb, table).hours("hooks", NOW)
    assert (item["attempts"], item["delivered"], item["retried"]) == (48, 24, 24)
    assert sum(int(item.get(bucket_name(i), 0)) for i in range(len(LATENCY_BUCKETS))) == 24



# --- profiles ------------------------------------------------------------------------------

@pytest.fixture
def profile_tables(moto: None) -> ActivationProfiles:
    ddb = boto3.client("dynamodb")
    for spec in (resources.IDENTITY_TABLE, resources.EVENTS_TABLE, resources.MEMBERSHIPS_TABLE):
        ddb.create_table(**create_table_request(spec))
    writer = moto_writer()
    writer.profile("prof_ana", ["user_id:ana", "anonymous_id:device-1", "email:ana@example.com"],
                   traits={"plan": ("pro", "2026-12-01T10:00:00.000Z", "m1")}, merged_from=["prof_old"])
    writer.merged("prof_old", into="prof_ana")
    writer.point("anonymous_id:device-old", "prof_old")  # an identifier still pointing at the merged profile
    writer.profile("prof_bob", ["anonymous_id:device-2"])
    store = MembershipStore(ddb, resources.MEMBERSHIPS_TABLE.local_name)
    store.apply("prof_ana", [Decision("vip", True, "entered", 3, "2026-12-01T10:00:00.000Z"),
                             Decision("pro", True, "entered", 3, "2026-12-01T10:00:00.000Z")], {})
    store.apply("prof_ana", [Decision("pro", False, "exited", 4, "2026-12-02T10:00:00.000Z")],
                store.of_profile("prof_ana"))
    return ActivationProfiles(ddb, resources.IDENTITY_TABLE.local_name, resources.EVENTS_TABLE.local_name,
                              resources.MEMBERSHIPS_TABLE.local_name)


def test_an_events_person_is_found_by_user_id_then_anonymous_id(profile_tables: ActivationProfiles) -> None:
    def who(event: dict[str, object]) -> str | None:
        return profile_tables.person_of(event, need_audiences=False).profile_id

    assert who({"userId": "ana", "anonymousId": "device-2"}) == "prof_ana"
    assert who({"userId": "someone-new", "anonymousId": "device-2"}) == "prof_bob"
    assert who({"userId": "  ana "}) == "prof_ana"  # normalised as stored
    assert who({"anonymousId": "device-old"}) == "prof_ana"  # follows the merge
    assert profile_tables.person_of({"userId": "nobody"}, False) == Person(None)
    assert profile_tables.person_of({"userId": "", "anonymousId": None}, False) == Person(None)
    assert who({"userId": {"not": "an id"}, "anonymousId": "device-2"}) == "prof_bob"
    # the profile's traits and identifiers come along, for triggers' profile conditions
    found = profile_tables.person_of({"userId": "ana"}, False).profile
    assert found is not None and "ana" in found["identifiers"]["user_id"] and "traits" in found


def test_a_persons_audiences_are_read_only_when_asked(profile_tables: ActivationProfiles) -> None:
    person = profile_tables.person_of({"userId": "ana"}, need_audiences=True)
    assert (person.profile_id, person.audiences) == ("prof_ana", frozenset({"vip"}))
    assert profile_tables.person_of({"userId": "ana"}, need_audiences=False).audiences == frozenset()
    assert profile_tables.audiences_of("prof_ana") == ["vip"]
    assert profile_tables.audiences_of("prof_bob") == []


def test_profiles_are_read_following_merges(profile_tables: ActivationProfiles) -> None:
    found = profile_tables.profiles(["prof_ana", "prof_old", "prof_gone"])
    assert found["prof_ana"] is not None and found["prof_old"] is not None
    assert found["prof_old"].profile_id == "prof_ana"
    assert found["prof_ana"].state.traits["plan"].value == "pro"
    assert sorted(i.key() for i in found["prof_ana"].identifiers) == [
        "anonymous_id:device-1", "email:ana@example.com", "user_id:ana"]
    assert found["prof_gone"] is None


def test_current_memberships_of_pairs(profile_tables: ActivationProfiles) -> None:
    assert profile_tables.memberships_of({"prof_ana": ["vip", "pro", "never"], "prof_bob": ["vip"]}) == {
        "prof_ana": {"vip": True, "pro": False}}


def test_a_batchs_people_are_read_together_and_match_one_by_one_lookups(profile_tables: ActivationProfiles) -> None:
    events = [{"userId": "ana", "anonymousId": "device-2"}, {"userId": "someone-new", "anonymousId": "device-2"},
              {"anonymousId": "device-old"}, {"userId": "nobody"}, {"userId": "", "anonymousId": None}]
    calls: list[str] = []
    client = profile_tables._tables._ddb
    client.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    batch = profile_tables.persons_of(events, {"vip", "pro"})
    batch_calls = list(calls)
    assert [p.profile_id for p in batch] == [profile_tables.person_of(e, False).profile_id for e in events]
    assert batch[0].audiences == frozenset({"vip"}) and batch[0].profile is not None
    # identifier items, profiles (a home profile's item and a merge pointer take a second
    # round each), memberships: batched reads, whatever the batch's size
    assert batch_calls.count("Query") == 0 and len(batch_calls) <= 5, batch_calls
