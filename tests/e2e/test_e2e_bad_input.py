"""Bad requests through the running local stack: each is a 4xx that says why, and stores nothing.

Raw HTTP (http.client), so every byte on the wire is what the test chose.
"""

from __future__ import annotations

import base64
import gzip as gzip_module
import http.client
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from e2e_pipeline import Pipeline

pytestmark = pytest.mark.e2e


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(pipeline: Pipeline, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    url = urlsplit(pipeline.api_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def headers_for(pipeline: Pipeline, **extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": basic(pipeline.write_key), **extra}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth):
        value = {"child": value}
    return value


@dataclass(frozen=True)
class BadRequest:
    """A request that must be refused; ``build(marker)`` returns path, body and headers."""

    name: str
    build: Callable[[Pipeline, str], tuple[str, bytes, dict[str, str]]]
    statuses: tuple[int, ...]
    field: str | None = None


def track(marker: str, **fields: Any) -> dict[str, Any]:
    return {"userId": f"user-{marker}", "event": "Bad Input Probe", "messageId": marker,
            "properties": {"marker": marker}, **fields}


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


CASES = [
    BadRequest("invalid JSON", lambda p, m: (
        "/v1/track", b'{"userId": "user-' + m.encode() + b'", "event": "x",', headers_for(p)), (400,)),
    BadRequest("wrong content type", lambda p, m: (
        "/v1/track", as_json(track(m)),
        headers_for(p, **{"Content-Type": "application/x-www-form-urlencoded"})),
        (415,)),
    BadRequest("body over 500 KB", lambda p, m: (
        "/v1/batch", as_json({"batch": [track(f"{m}-{i}", properties={"pad": "x" * 20_000, "marker": m})
                                        for i in range(30)]}), headers_for(p)), (413,)),
    BadRequest("single event over 32 KB", lambda p, m: (
        "/v1/track", as_json(track(m, properties={"marker": m, "pad": "x" * 40_000})), headers_for(p)),
        (413,)),
    BadRequest("batch of 2,501 events", lambda p, m: (
        "/v1/batch", as_json({"batch": [{"type": "track", "userId": "u", "event": "e",
                                         "messageId": f"{m}-{i}"} for i in range(2501)]}),
        headers_for(p)), (400,)),
    BadRequest("neither userId nor anonymousId", lambda p, m: (
        "/v1/track", as_json({"event": "Bad Input Probe", "messageId": m, "properties": {"marker": m}}),
        headers_for(p)), (400,)),
    BadRequest("unknown type", lambda p, m: (
        "/v1/batch", as_json({"batch": [{**track(m), "type": "purchase"}]}), headers_for(p)), (400,)),
    BadRequest("userId of the wrong type", lambda p, m: (
        "/v1/track", as_json(track(m, userId={"id": m})), headers_for(p)), (400,), "userId"),
    BadRequest("properties of the wrong type", lambda p, m: (
        "/v1/track", as_json(track(m, properties=f"marker {m}")), headers_for(p)), (400,), "properties"),
    BadRequest("event name of the wrong type", lambda p, m: (
        "/v1/track", as_json(track(m, event=["Bad", m])), headers_for(p)), (400,), "event"),
    BadRequest("missing write key", lambda p, m: (
        "/v1/track", as_json(track(m)), {"Content-Type": "application/json"}), (401,)),
    BadRequest("unknown write key", lambda p, m: (
        "/v1/track", as_json(track(m)), headers_for(p, Authorization=basic("no-such-key"))), (401,)),
    BadRequest("non-UTF-8 bytes", lambda p, m: (
        "/v1/track", b'{"userId":"user-' + m.encode() + b'","event":"\xff\xfe caf\xe9"}', headers_for(p)),
        (400,)),
    BadRequest("non-UTF-8 bytes, gzipped", lambda p, m: (
        "/v1/track", gzip_module.compress(b'{"userId":"user-' + m.encode() + b'","event":"\xe9"}'),
        headers_for(p, **{"Content-Encoding": "gzip"})), (400,)),
    BadRequest("deeply nested properties", lambda p, m: (
        "/v1/track", as_json(track(m, properties={"marker": m, "deep": nested(60)})), headers_for(p)),
        (400,)),
    BadRequest("huge number of properties", lambda p, m: (
        "/v1/track", as_json(track(m, properties={"marker": m, **{f"k{i}": i for i in range(2000)}})),
        headers_for(p)), (400, 413)),
    BadRequest("corrupt gzip", lambda p, m: (
        "/v1/track", b"\x1f\x8b\x08\x00" + m.encode(), headers_for(p, **{"Content-Encoding": "gzip"})),
        (400,)),
]


@dataclass
class Refused:
    replies: dict[str, tuple[str, Reply]]  # case name -> (marker, reply)
    stored_text: str  # everything in the events table and the archive afterwards, as JSON


@pytest.fixture(scope="module")
def refused(pipeline: Pipeline) -> Refused:
    """Send every bad request once, let the pipeline drain, then read what it stored."""
    replies = {}
    for case in CASES:
        marker = f"bad-{uuid.uuid4().hex}"
        path, body, headers = case.build(pipeline, marker)
        replies[case.name] = (marker, send(pipeline, "POST", path, body, headers))
    pipeline.drain()
    stored = pipeline.stored()
    return Refused(replies, json.dumps([stored.table, stored.archive]))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_bad_request_gets_a_4xx_with_a_json_reason(refused: Refused, case: BadRequest) -> None:
    _marker, reply = refused.replies[case.name]

    assert reply.status in case.statuses, reply.body[:500]
    assert reply.headers.get("content-type", "").startswith("application/json")
    body = reply.json()
    assert body["success"] is False
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if case.field:
        assert body["error"].get("field") == case.field


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_nothing_from_a_bad_request_reaches_the_events_table_or_archive(
        refused: Refused, case: BadRequest) -> None:
    marker, _reply = refused.replies[case.name]

    assert marker not in refused.stored_text


def test_a_batch_with_some_bad_events_accepts_the_good_ones_and_says_which_were_refused(
        pipeline: Pipeline) -> None:
    marker = f"mixed-{uuid.uuid4().hex}"
    good = track(f"{marker}-good", type="track")
    bad = {"type": "track", "event": "No Identity", "messageId": f"{marker}-bad"}
    reply = send(pipeline, "POST", "/v1/batch", as_json({"batch": [good, bad]}), headers_for(pipeline))

    assert reply.status == 200
    body = reply.json()
    assert body["success"] is True
    [rejected] = body["rejected"]
    assert rejected["index"] == 1
    assert rejected["reason"]
    pipeline.drain()
    stored = pipeline.stored()
    assert len(stored.table[f"{marker}-good"]) == 1
    assert f"{marker}-bad" not in stored.table and f"{marker}-bad" not in stored.archive
