"""Collector -> Kinesis -> consumer -> archive + events table + dedupe, on moto."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import boto3

from cdp import resources
from cdp.aws.archive import S3Archive
from cdp.aws.event_store import event_of_item
from tests.conftest import load_handler
from tests.integration.conftest import basic_auth, history, http_event, read_stream_as_lambda_event, scan

collector = load_handler("collector")
consumer = load_handler("stream_consumer")

JSON = {"Content-Type": "application/json"}


def post(path: str, body: Any, key: str, ctx: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    all_headers = {**JSON, "Authorization": basic_auth(key), **(headers or {})}
    return collector.handler(http_event(path, body, all_headers), ctx)


def archived_events() -> list[dict[str, Any]]:
    s3 = boto3.client("s3")
    archive = S3Archive(s3, resources.ARCHIVE_BUCKET.local_name)
    objects = s3.list_objects_v2(Bucket=resources.ARCHIVE_BUCKET.local_name, Prefix="events/")
    lines = []
    for obj in objects.get("Contents", []):
        lines.extend(archive.read(obj["Key"]))
    return lines


def test_tracked_event_is_stored_once_and_archived(write_key, lambda_context):
    response = post("/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": "m-1",
                                  "properties": {"plan": "pro"}}, write_key, lambda_context)
    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"]) == {"success": True, "accepted": 1}

    event = read_stream_as_lambda_event()
    assert len(event["Records"]) == 1
    result = consumer.handler(event, lambda_context)
    assert result == {"batchItemFailures": []}

    items = history()
    assert len(items) == 1
    stored = event_of_item(items[0])
    assert stored["event"] == "Signed Up" and stored["properties"] == {"plan": "pro"}
    assert stored["messageId"] == "m-1" and stored["receivedAt"]
    assert items[0]["pk"] == "u#u1"
    assert [line["event"]["messageId"] for line in archived_events()] == ["m-1"]

    # The same batch delivered again (at-least-once) changes nothing.
    assert consumer.handler(event, lambda_context) == {"batchItemFailures": []}
    assert history() == items
    # Sent without a timestamp, the event is also marked by its messageId (what dedupes it).
    assert [i["pk"] for i in scan(resources.EVENTS_TABLE.local_name) if i["pk"].startswith("m#")] == ["m#m-1"]


def test_sdk_retry_with_same_message_id_is_a_duplicate(write_key, lambda_context):
    body = {"batch": [{"type": "identify", "userId": "u2", "messageId": "dup-1", "traits": {"a": 1}}]}
    assert post("/v1/batch", body, write_key, lambda_context)["statusCode"] == 200
    assert post("/v1/batch", body, write_key, lambda_context)["statusCode"] == 200
    event = read_stream_as_lambda_event()
    assert len(event["Records"]) == 2
    assert consumer.handler(event, lambda_context) == {"batchItemFailures": []}
    assert len(history()) == 1
    assert len(archived_events()) == 1


def test_gzip_batch_with_bad_event_accepts_the_good_ones(write_key, lambda_context):
    batch = {"batch": [
        {"type": "track", "userId": "u3", "event": "A"},
        {"type": "track", "userId": "u3"},  # no event name
        {"type": "bogus", "userId": "u3"},
        {"type": "page", "anonymousId": "anon-1", "name": "Home"},
    ]}
    response = post("/v1/b", gzip.compress(json.dumps(batch).encode()), write_key, lambda_context,
                    headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})
    body = json.loads(response["body"])
    assert response["statusCode"] == 200, body
    assert body["accepted"] == 2
    assert [(r["index"], r.get("field")) for r in body["rejected"]] == [(1, "event"), (2, "type")]

    assert consumer.handler(read_stream_as_lambda_event(), lambda_context) == {"batchItemFailures": []}
    assert len(history()) == 2
    quarantined = scan(resources.QUARANTINE_TABLE.local_name)
    assert sorted(int(q["index"]) for q in quarantined) == [1, 2]
    assert all(q["source_id"] == "src_test" and q["reason"] for q in quarantined)
    assert json.loads(next(q for q in quarantined if int(q["index"]) == 2)["raw"])["type"] == "bogus"


def test_sdk_retry_with_a_new_sent_at_is_still_a_duplicate(write_key, lambda_context):
    """A retry moves the skew-corrected timestamp (new sentAt, new receipt time), not the event's key."""
    first = {"batch": [{"type": "track", "userId": "u9", "event": "E", "messageId": "retry-1",
                        "timestamp": "2026-11-28T09:00:00.000Z"}], "sentAt": "2026-11-28T09:00:01.000Z"}
    again = {**first, "sentAt": "2026-11-28T09:00:07.350Z"}
    assert post("/v1/batch", first, write_key, lambda_context)["statusCode"] == 200
    assert post("/v1/batch", again, write_key, lambda_context)["statusCode"] == 200
    event = read_stream_as_lambda_event()
    stamps = {json.loads(base64.b64decode(r["kinesis"]["data"]))["event"]["timestamp"] for r in event["Records"]}
    assert len(stamps) == 2  # the copies differ after skew correction
    assert consumer.handler(event, lambda_context) == {"batchItemFailures": []}
    (item,) = history()
    assert item["sk"] == "2026-11-28T09:00:00.000Z#retry-1"
    assert not [i for i in scan(resources.EVENTS_TABLE.local_name) if i["pk"].startswith("m#")]


def test_consumer_reports_identity_metrics_per_batch(write_key, lambda_context, capsys):
    body = {"batch": [
        {"type": "page", "anonymousId": "metric-web", "name": "Home", "messageId": "mm-1",
         "timestamp": "2026-11-28T09:00:00.000Z"},
        {"type": "identify", "userId": "metric-user", "anonymousId": "metric-app", "messageId": "mm-2",
         "timestamp": "2026-11-28T09:00:01.000Z"},
    ]}
    assert post("/v1/batch", body, write_key, lambda_context)["statusCode"] == 200
    consumer.handler(read_stream_as_lambda_event(), lambda_context)
    capsys.readouterr()
    join = {"type": "identify", "userId": "metric-user", "anonymousId": "metric-web", "messageId": "mm-3",
            "timestamp": "2026-11-28T09:00:02.000Z"}
    assert post("/v1/identify", join, write_key, lambda_context)["statusCode"] == 200
    consumer.handler(read_stream_as_lambda_event(), lambda_context)
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"ProfilesMerged"' in line]
    (metrics,) = emitted  # the consumer's EMF line (the stream is read from its start: 3 records)
    assert metrics["ProfilesMerged"] in ([1.0], 1.0)  # the web visitor joined the user
    assert metrics["MergesBlocked"] in ([0.0], 0.0) and metrics["BatchConflicts"] in ([0.0], 0.0)
