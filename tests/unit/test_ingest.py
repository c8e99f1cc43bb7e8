"""Collection rules: decoding, auth, validation, limits, enrichment."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.ingest import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    MAX_KEYS_PER_EVENT,
    MAX_NESTING_DEPTH,
    MAX_REQUEST_BYTES,
    RequestRejected,
    StreamRecord,
    collect,
    normalize_event,
    partition_key,
    validate_event,
)
from cdp.segment import RejectedEvent
from cdp.sources import Source

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
KEY = "wk-123"
SOURCE = Source(source_id="src_1", name="web", enabled=True, key_hash="h")


class MemoryStream:
    def __init__(self) -> None:
        self.records: list[StreamRecord] = []

    def put_records(self, records: list[StreamRecord]) -> None:
        self.records.extend(records)

    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(r.data) for r in self.records]


def lookup(key: str) -> Source | None:
    return {KEY: SOURCE, "off": Source("src_2", "old", False, "h2")}.get(key)


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
            "content-type": "application/json"}


def run(route: str, body: Any, headers: dict[str, str] | None = None) -> tuple[Any, MemoryStream]:
    stream = MemoryStream()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    result = collect(route, raw, auth() if headers is None else headers, lookup, stream, now=lambda: NOW)
    return result, stream


def rejected(route: str, body: Any, headers: dict[str, str] | None = None) -> RequestRejected:
    stream = MemoryStream()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestRejected) as info:
        collect(route, raw, auth() if headers is None else headers, lookup, stream, now=lambda: NOW)
    assert stream.records == [], "a refused request must have no side effect"
    return info.value


# --- auth ---------------------------------------------------------------------


def test_write_key_in_body_is_accepted_and_not_stored():
    result, stream = run("track", {"writeKey": KEY, "userId": "u", "event": "E"},
                         headers={"content-type": "text/plain"})
    assert result.accepted == 1
    assert "writeKey" not in stream.envelopes()[0]["event"]


@pytest.mark.parametrize(("headers", "code"), [
    ({"content-type": "application/json"}, "missing_write_key"),
    (auth("nope"), "invalid_write_key"),
    (auth("off"), "source_disabled"),
])
def test_bad_write_keys_are_401(headers, code):
    error = rejected("track", {"userId": "u", "event": "E"}, headers)
    assert (error.status, error.code) == (401, code)


# --- body decoding ----------------------------------------------------------------


def test_gzip_body_is_decompressed():
    body = gzip.compress(json.dumps({"userId": "u", "event": "E"}).encode())
    result, _ = run("t", body, {**auth(), "content-encoding": "gzip"})
    assert result.accepted == 1


def test_gzip_bomb_is_413_without_inflating_everything():
    bomb = gzip.compress(b"{" + b" " * (50 * MAX_REQUEST_BYTES) + b"}")
    assert len(bomb) < MAX_REQUEST_BYTES
    error = rejected("track", bomb, {**auth(), "content-encoding": "gzip"})
    assert error.status == 413


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    (b"{not json", None, 400, "invalid_json"),
    (b"[1,2]", None, 400, "invalid_json"),
    (b'{"userId": "\xff\xfe"}', None, 400, "invalid_encoding"),
    (b"x" * (MAX_REQUEST_BYTES + 1), None, 413, "request_too_large"),
    (b"{}", {**auth(), "content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_content_type"),
    (b"{}", {**auth(), "content-encoding": "br"}, 415, "unsupported_content_encoding"),
    (b"not gzip", {**auth(), "content-encoding": "gzip"}, 400, "invalid_body_encoding"),
])
def test_undecodable_requests_say_why(body, headers, status, code):
    error = rejected("track", body, headers)
    assert (error.status, error.code) == (status, code)
    assert error.body()["error"]["message"]


def test_json_nested_beyond_the_parser_is_400():
    body = b'{"properties":' + b'{"a":' * 5000 + b"1" + b"}" * 5001
    error = rejected("track", body)
    assert error.status == 400


# --- single calls -----------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"event": "E"}, None),  # neither userId nor anonymousId
    ({"userId": {"id": 1}, "event": "E"}, "userId"),
    ({"userId": True, "event": "E"}, "userId"),
    ({"userId": "u", "event": ""}, "event"),
    ({"userId": "u", "event": "E", "properties": ["not", "an", "object"]}, "properties"),
    ({"userId": "u", "event": "E", "timestamp": "yesterday"}, "timestamp"),
    ({"userId": "u", "event": "E", "type": "identify"}, "type"),
    ({"userId": "x" * 2000, "event": "E"}, "userId"),
])
def test_invalid_single_track_is_400_naming_the_field(body, field):
    error = rejected("track", body)
    assert (error.status, error.code) == (400, "invalid_event")
    assert error.field == field
    assert error.message


def test_event_over_32kb_is_413():
    error = rejected("track", {"userId": "u", "event": "E", "properties": {"blob": "x" * MAX_EVENT_BYTES}})
    assert (error.status, error.code) == (413, "event_too_large")


def test_deeply_nested_properties_are_refused():
    nested: dict[str, Any] = {}
    node = nested
    for _ in range(MAX_NESTING_DEPTH + 1):
        node["a"] = {}
        node = node["a"]
    error = rejected("track", {"userId": "u", "event": "E", "properties": nested})
    assert error.status == 400 and "nesting" in error.message


def test_huge_number_of_properties_is_refused():
    props = {f"p{i}": i for i in range(MAX_KEYS_PER_EVENT + 1)}
    error = rejected("track", {"userId": "u", "event": "E", "properties": props})
    assert error.status == 400 and "keys" in error.message


def test_numeric_user_id_becomes_a_string():
    _, stream = run("identify", {"userId": 42, "traits": {"email": "a@example.com"}})
    assert stream.envelopes()[0]["event"]["userId"] == "42"


def test_alias_needs_previous_id_and_a_different_user_id():
    assert rejected("alias", {"userId": "u"}).field == "previousId"
    to_itself = rejected("alias", {"userId": "u", "previousId": " u "})
    assert "differ" in to_itself.message and to_itself.field == "previousId"


def test_group_needs_group_id():
    assert rejected("group", {"userId": "u"}).field == "groupId"


def test_unknown_route_is_404():
    assert rejected("frobnicate", {"userId": "u"}).status == 404


# --- batches -----------------------------------------------------------------------


def test_batch_over_2500_events_is_refused_whole():
    batch = [{"type": "track", "userId": "u", "event": "E"}] * (MAX_BATCH_EVENTS + 1)
    error = rejected("batch", {"batch": batch})
    assert (error.status, error.code) == (400, "batch_too_large")


def test_batch_reports_rejected_by_index_and_files_them_for_quarantine():
    result, stream = run("batch", {"batch": [
        {"type": "track", "userId": "u", "event": "E"},
        {"type": "nope", "userId": "u"},
        "not an object",
        {"type": "identify", "anonymousId": "a"},
    ]})
    assert result.accepted == 2
    assert [r.index for r in result.rejected] == [1, 2]
    kinds = [e["kind"] for e in stream.envelopes()]
    assert kinds == ["event", "rejected", "rejected", "event"]
    assert stream.envelopes()[1]["rejection"]["field"] == "type"


def test_batch_of_only_bad_events_is_400_but_still_quarantined():
    stream = MemoryStream()
    with pytest.raises(RequestRejected) as info:
        collect("batch", json.dumps({"batch": [{"type": "track"}]}).encode(), auth(), lookup, stream,
                now=lambda: NOW)
    assert info.value.status == 400 and info.value.rejected
    assert [json.loads(r.data)["kind"] for r in stream.records] == ["rejected"]


def test_batch_level_context_and_sent_at_apply_to_each_event():
    _, stream = run("import", {
        "context": {"library": {"name": "analytics-python"}},
        "sentAt": "2026-11-28T12:00:10Z",
        "batch": [{"type": "track", "userId": "u", "event": "E", "timestamp": "2026-11-28T12:00:00Z",
                   "context": {"locale": "fr"}}],
    })
    event = stream.envelopes()[0]["event"]
    assert event["context"]["library"]["name"] == "analytics-python"
    assert event["context"]["locale"] == "fr"
    assert event["timestamp"] == "2026-11-28T11:59:50.000Z"  # NOW - 10 s


# --- enrichment -----------------------------------------------------------------


def _normalize(raw: dict[str, Any]) -> dict[str, Any]:
    call = validate_event(raw, None)
    assert not isinstance(call, RejectedEvent)
    return normalize_event(raw, call, NOW, message_id_factory=lambda: "generated")


def test_clock_skew_is_corrected_from_sent_at():
    # The device clock is 1 hour fast: it says sentAt 13:00:05 for an event at 13:00:00.
    event = _normalize({"type": "track", "userId": "u", "event": "E",
                        "timestamp": "2026-11-28T13:00:00Z", "sentAt": "2026-11-28T13:00:05Z"})
    assert event["timestamp"] == "2026-11-28T11:59:55.000Z"
    assert event["originalTimestamp"] == "2026-11-28T13:00:00.000Z"
    assert event["receivedAt"] == "2026-11-28T12:00:00.000Z"


def test_without_sent_at_the_client_timestamp_is_kept():
    event = _normalize({"type": "track", "userId": "u", "event": "E", "timestamp": "2026-01-01T00:00:00Z"})
    assert event["timestamp"] == "2026-01-01T00:00:00.000Z"


def test_without_any_client_time_timestamp_is_received_at():
    event = _normalize({"type": "track", "userId": "u", "event": "E"})
    assert event["timestamp"] == event["receivedAt"]
    assert event["messageId"] == "generated"


def test_client_message_id_is_kept_and_original_payload_untouched():
    raw = {"type": "track", "userId": " u ", "event": "E", "messageId": "m1", "custom": {"x": 1}}
    copy = json.loads(json.dumps(raw))
    event = _normalize(raw)
    assert event["messageId"] == "m1" and event["custom"] == {"x": 1} and event["userId"] == "u"
    assert raw == copy


def test_client_cannot_set_received_at():
    event = _normalize({"type": "track", "userId": "u", "event": "E", "receivedAt": "2001-01-01T00:00:00Z"})
    assert event["receivedAt"] == "2026-11-28T12:00:00.000Z"


def test_absurd_client_clock_falls_back_to_receipt_time():
    # receivedAt - (sentAt - originalTimestamp) would be past year 9999.
    event = _normalize({"type": "track", "userId": "u", "event": "E", "timestamp": "9999-08-05T12:49:44Z",
                        "sentAt": "0001-06-06T18:23:28Z"})
    assert event["timestamp"] == event["receivedAt"]
    assert event["originalTimestamp"] == "9999-08-05T12:49:44.000Z"


def test_timestamps_must_be_iso_strings():
    assert rejected("track", {"userId": "u", "event": "E", "timestamp": 1700000000}).field == "timestamp"


def test_partition_key_hides_the_identifier_and_prefers_user_id():
    key = partition_key({"userId": "ana@example.com", "anonymousId": "a"})
    assert "ana" not in key and len(key) == 32
    assert key == partition_key({"userId": "ana@example.com", "anonymousId": "other"})


def test_time_not_expressible_in_utc_is_kept_as_sent():
    event = _normalize({"type": "track", "userId": "u", "event": "E",
                        "originalTimestamp": "0001-01-01T00:00:00.0+01:00", "sentAt": "2026-11-28T12:00:00Z"})
    assert event["originalTimestamp"] == "0001-01-01T00:00:00.0+01:00"
    assert event["timestamp"] == event["receivedAt"]


def test_ids_are_trimmed_of_the_whitespace_the_published_schema_knows():
    _, stream = run("identify", {"userId": "\u00a0ana\u3000", "anonymousId": "\x1e"})
    event = stream.envelopes()[0]["event"]
    assert event["userId"] == "ana" and event["anonymousId"] == "\x1e"
