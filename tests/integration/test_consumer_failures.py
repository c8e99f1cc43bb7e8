"""The consumer under failure: events held by other records, broken stages, poison records."""

from __future__ import annotations

import base64
import json

import boto3
import pytest

from cdp import resources
from cdp.aws.event_store import HistoryEntry, HistoryStore, event_of_item
from tests.conftest import load_handler
from tests.integration.conftest import read_stream_as_lambda_event, scan
from tests.integration.test_collection_pipeline import post

consumer = load_handler("stream_consumer")


def _send_three(write_key, ctx):
    body = {"batch": [{"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m-{i}"}
                      for i in range(3)]}
    assert post("/v1/batch", body, write_key, ctx)["statusCode"] == 200
    return read_stream_as_lambda_event()


def _history_ids() -> list[str]:
    return sorted(i["sk"].split("#")[1] for i in scan(resources.EVENTS_TABLE.local_name)
                  if i["pk"].startswith(("u#", "a#")))


def test_event_recorded_by_another_record_is_a_duplicate_until_that_record_is_redriven(
        write_key, lambda_context):
    event = _send_three(write_key, lambda_context)
    # Another record carrying m-1 recorded it and then failed for good (it is in the DLQ)
    # without removing it (a crash).
    m1 = json.loads(base64.b64decode(event["Records"][1]["kinesis"]["data"]))["event"]
    store = HistoryStore(boto3.client("dynamodb"), resources.EVENTS_TABLE.local_name)
    assert store.claim([HistoryEntry("src_test", m1, owner="shardId-000000000009:77")]).claimed

    assert consumer.handler(event, lambda_context) == {"batchItemFailures": []}
    profiles = [i for i in scan(resources.IDENTITY_TABLE.local_name) if i["pk"].startswith("ident#user_id:")]
    assert sorted(p["pk"] for p in profiles) == ["ident#user_id:u0", "ident#user_id:u2"]  # m-1 skipped

    # Its redrive (a new record that names the original) takes the claim over.
    redrive = json.loads(json.dumps({"Records": event["Records"][1:2]}))
    record = redrive["Records"][0]
    envelope = json.loads(base64.b64decode(record["kinesis"]["data"]))
    envelope["redrive_of"] = "shardId-000000000009:77"
    record["kinesis"]["data"] = base64.b64encode(json.dumps(envelope).encode()).decode()
    record["kinesis"]["sequenceNumber"] = "8" + record["kinesis"]["sequenceNumber"]
    record["eventID"] = "shardId-000000000000:" + record["kinesis"]["sequenceNumber"]
    assert consumer.handler(redrive, lambda_context) == {"batchItemFailures": []}
    assert _history_ids() == ["m-0", "m-1", "m-2"]
    profiles = [i for i in scan(resources.IDENTITY_TABLE.local_name) if i["pk"].startswith("ident#user_id:")]
    assert len(profiles) == 3  # the redrive was processed


def test_failing_store_fails_the_batch_and_a_retry_converges(write_key, lambda_context, monkeypatch):
    event = _send_three(write_key, lambda_context)
    store = consumer.consumer()._stages[0]
    calls = {"n": 0}
    real_store = store.store

    def flaky(pairs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("DynamoDB unavailable")
        real_store(pairs)

    monkeypatch.setattr(store, "store", flaky)
    with pytest.raises(Exception, match="All records failed"):
        consumer.handler(event, lambda_context)
    assert _history_ids() == []  # the failed attempt removed what it recorded
    assert consumer.handler(event, lambda_context) == {"batchItemFailures": []}
    assert _history_ids() == ["m-0", "m-1", "m-2"]
    profiles = [i for i in scan(resources.IDENTITY_TABLE.local_name) if i["pk"].startswith("prof#")]
    assert len(profiles) == 3


def test_poison_records_are_quarantined_not_retried(write_key, lambda_context):
    event = _send_three(write_key, lambda_context)
    template = event["Records"][0]
    poison = []
    for i, data in enumerate([b"\x00\x01 not json", json.dumps({"v": 99}).encode(),
                              json.dumps({"v": 1, "kind": "event", "source_id": "crm",
                                          "event": {"type": "track", "event": "no identity"}}).encode()]):
        record = json.loads(json.dumps(template))
        record["kinesis"]["data"] = base64.b64encode(data).decode()
        record["kinesis"]["sequenceNumber"] = f"9{i:020d}"
        record["eventID"] = f"shardId-000000000000:9{i:020d}"
        poison.append(record)
    response = consumer.handler({"Records": event["Records"] + poison}, lambda_context)
    assert response == {"batchItemFailures": []}
    assert _history_ids() == ["m-0", "m-1", "m-2"]
    reasons = sorted(q["reason"] for q in scan(resources.QUARANTINE_TABLE.local_name))
    assert reasons == ["either userId or anonymousId is required", "record is not JSON",
                       "unknown record format; expected an object with v=1"]
    objects = boto3.client("s3").list_objects_v2(Bucket=resources.ARCHIVE_BUCKET.local_name,
                                                  Prefix="quarantine/")
    assert objects["KeyCount"] == 1


def test_connector_record_without_receipt_time_is_normalised_with_a_stable_message_id(aws, lambda_context):
    kinesis = boto3.client("kinesis")
    envelope = {"v": 1, "kind": "event", "source_id": "crm-sync",
                "event": {"type": "identify", "userId": "crm-7", "traits": {"plan": "gold"}}}
    kinesis.put_record(StreamName=resources.EVENT_STREAM.local_name, Data=json.dumps(envelope).encode(),
                       PartitionKey="crm-7")
    event = read_stream_as_lambda_event()
    assert consumer.handler(event, lambda_context) == {"batchItemFailures": []}
    assert consumer.handler(event, lambda_context) == {"batchItemFailures": []}
    items = [i for i in scan(resources.EVENTS_TABLE.local_name) if i["pk"].startswith(("u#", "a#"))]
    assert len(items) == 1
    stored = event_of_item(items[0])
    assert stored["messageId"].startswith("kinesis-shardId-000000000000-")
    assert stored["receivedAt"] and stored["traits"] == {"plan": "gold"}


def test_failed_batch_removes_its_events_so_a_redriven_copy_is_not_a_duplicate(write_key, lambda_context,
                                                                          monkeypatch):
    event = _send_three(write_key, lambda_context)
    store = consumer.consumer()._stages[0]
    real_store = store.store
    monkeypatch.setattr(store, "store", lambda pairs: (_ for _ in ()).throw(RuntimeError("down")))
    with pytest.raises(Exception, match="All records failed"):
        consumer.handler(event, lambda_context)
    assert _history_ids() == []  # removed after the failure

    # A redriven copy is a new Kinesis record (new sequence number, new owner).
    monkeypatch.setattr(store, "store", real_store)
    copies = json.loads(json.dumps(event))
    for record in copies["Records"]:
        record["kinesis"]["sequenceNumber"] = "7" + record["kinesis"]["sequenceNumber"]
        record["eventID"] = "shardId-000000000000:" + record["kinesis"]["sequenceNumber"]
    assert consumer.handler(copies, lambda_context) == {"batchItemFailures": []}
    assert _history_ids() == ["m-0", "m-1", "m-2"]
