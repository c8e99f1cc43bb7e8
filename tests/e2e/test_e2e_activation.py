"""Activation end to end on the local stack, with the real Segment Python SDK and the real
``cdp`` CLI: a person enters an audience and the customer's webhook (signed) and the S3
export receive it; leaving is delivered after the entry; a trigger on a member's event
posts to Slack within seconds; a failing webhook is retried until it recovers, a refused
message goes to the dead-letter queue with its reason and ``cdp destinations redrive``
delivers it. The destinations are configured in tests/e2e/conftest.py."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import segment.analytics as segment_analytics
from conftest import ACTIVATION_AUDIENCE, EXPORT_BUCKET, FLAKY_AUDIENCE, SYNC_AUDIENCE, WEBHOOK_SECRET
from e2e_pipeline import Pipeline
from receivers import Received, Receiver
from test_e2e_operations import cdp
from test_e2e_segmentation_sdk import admin, wait_for

from cdp.activation.webhook_signing import verify

pytestmark = pytest.mark.e2e


def sdk(pipeline: Pipeline) -> Any:
    return segment_analytics.Client(pipeline.write_key, host=pipeline.api_url, sync_mode=True)


@pytest.fixture(scope="module")
def audiences(pipeline: Pipeline) -> Iterator[None]:
    """The audiences the destinations list, ready (backfilled) before the tests send anything."""
    definitions = [
        {"id": ACTIVATION_AUDIENCE, "name": "Gold tier",
         "condition": {"type": "trait", "trait": "activation_tier", "op": "equals", "value": "gold"}},
        {"id": FLAKY_AUDIENCE, "name": "Flaky",
         "condition": {"type": "trait", "trait": "flaky_marker", "op": "exists"}},
        {"id": SYNC_AUDIENCE, "name": "Synced",
         "condition": {"type": "trait", "trait": "sync_tier", "op": "equals", "value": "in"}},
    ]
    for definition in definitions:
        admin(pipeline, "POST", "/audiences", definition)
    for definition in definitions:
        wait_for(lambda d=definition: admin(pipeline, "GET", f"/audiences/{d['id']}")["status"] == "ready",
                 timeout=180)
    pipeline.drain(timeout=180)
    yield
    for definition in definitions:
        admin(pipeline, "DELETE", f"/audiences/{definition['id']}")


def changes_of(receiver: Receiver, path: str, user: str) -> list[Received]:
    return [r for r in receiver.received(path)
            if r.body.get("kind") == "audience_membership"
            and user in ((r.body.get("profile") or {}).get("identifiers") or {}).get("user_id", [])]


def export_rows(pipeline: Pipeline, profile_id: str) -> list[dict[str, str]]:
    s3 = pipeline.stack.session().client("s3")
    rows: list[dict[str, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=EXPORT_BUCKET, Prefix=f"cdp/e2e-exports/incremental/{ACTIVATION_AUDIENCE}/"):
        for item in page.get("Contents", []):
            text = s3.get_object(Bucket=EXPORT_BUCKET, Key=item["Key"])["Body"].read().decode()
            rows += [row for row in csv.DictReader(io.StringIO(text)) if row["profile_id"] == profile_id]
    return rows


def test_an_sdk_user_entering_an_audience_reaches_the_webhook_and_the_s3_export_then_leaves_in_order(
        pipeline: Pipeline, receiver: Receiver, audiences: None) -> None:
    user = f"act-{uuid.uuid4().hex[:10]}"
    email = f"{user}@example.com"
    client = sdk(pipeline)
    sent = time.time()
    client.identify(user, {"activation_tier": "gold", "email": email, "plan": "team"})
    client.flush()

    wait_for(lambda: changes_of(receiver, "/hooks", user))
    (entered,) = changes_of(receiver, "/hooks", user)
    print(f"webhook: entry delivered {entered.at - sent:.1f} s after the identify call")
    body = entered.body
    assert (body["audience_id"], body["transition"], body["event"]) == (ACTIVATION_AUDIENCE, "entered",
                                                                        "Audience Entered")
    assert body["profile"]["fields"] == {"email_address": email, "plan": "team"}
    headers = {k.lower(): v for k, v in entered.headers.items()}
    assert verify(headers["x-cdp-signature"], entered.raw, [WEBHOOK_SECRET.encode()], now=time.time())
    assert not verify(headers["x-cdp-signature"], entered.raw, [b"another secret"], now=time.time())
    assert headers["idempotency-key"] == body["message_id"] and headers["x-team"] == "growth"

    profile_id = body["profile"]["profile_id"]
    wait_for(lambda: export_rows(pipeline, profile_id))
    (row,) = export_rows(pipeline, profile_id)
    assert (row["audience_id"], row["action"], row["email"]) == (ACTIVATION_AUDIENCE, "add", email)

    client.identify(user, {"activation_tier": "silver"})
    client.flush()
    wait_for(lambda: len(changes_of(receiver, "/hooks", user)) == 2)
    first, second = changes_of(receiver, "/hooks", user)
    assert (first.body["transition"], second.body["transition"]) == ("entered", "exited")
    assert second.body["version"] > first.body["version"]
    # An exit carries the identifiers needed to remove the person, not their traits.
    assert second.body["profile"]["fields"] == {} and second.body["profile"]["traits"] == {}
    wait_for(lambda: len(export_rows(pipeline, profile_id)) == 2)
    assert sorted(r["action"] for r in export_rows(pipeline, profile_id)) == ["add", "remove"]
    assert len(changes_of(receiver, "/hooks", user)) == 2  # each change delivered once


def test_a_members_pricing_view_posts_to_slack_within_seconds_and_others_do_not(
        pipeline: Pipeline, receiver: Receiver, audiences: None) -> None:
    member, other = f"slack-{uuid.uuid4().hex[:8]}", f"slack-{uuid.uuid4().hex[:8]}"
    client = sdk(pipeline)
    client.identify(member, {"activation_tier": "gold"})
    client.identify(other, {"activation_tier": "bronze"})
    client.flush()
    wait_for(lambda: changes_of(receiver, "/hooks", member))  # the member's entry is through
    pipeline.drain(timeout=120)
    before = len(receiver.received("/slack"))

    sent = time.time()
    client.track(member, "Pricing Viewed", {"plan": "enterprise"})
    client.track(member, "Pricing Viewed", {"plan": "free"})  # filtered out by the trigger's where
    client.track(other, "Pricing Viewed", {"plan": "enterprise"})  # not a member
    client.flush()
    wait_for(lambda: len(receiver.received("/slack")) > before)
    pipeline.drain(timeout=120)
    alerts = receiver.received("/slack")[before:]
    assert len(alerts) == 1, [a.body for a in alerts]
    print(f"slack: alert delivered {alerts[0].at - sent:.1f} s after the track call")
    text = json.dumps(alerts[0].body)
    assert "pricing-by-active" in text and member in text and other not in text
    assert alerts[0].body.get("blocks"), alerts[0].body


def test_a_failing_webhook_is_retried_until_it_recovers_and_a_refused_change_is_redriven(
        pipeline: Pipeline, receiver: Receiver, audiences: None) -> None:
    client = sdk(pipeline)
    # Two answers that ask for a retry (honouring Retry-After), then 200.
    receiver.script("/flaky", [(503, {"Retry-After": "1"}), (429, {"Retry-After": "1"})])
    user = f"flaky-{uuid.uuid4().hex[:8]}"
    client.identify(user, {"flaky_marker": "x"})
    client.flush()
    wait_for(lambda: changes_of(receiver, "/flaky", user))
    attempts = [r for r in receiver.received("/flaky", accepted_only=False)
                if user in json.dumps(r.body)]
    assert [r.status for r in attempts] == [503, 429, 200]
    assert len({r.headers.get("Idempotency-Key") for r in attempts}) == 1  # the same key every attempt

    # A refusal that will never succeed: the dead-letter queue, with the reason.
    receiver.script("/flaky", [(400, {})])
    refused = f"refused-{uuid.uuid4().hex[:8]}"
    client.identify(refused, {"flaky_marker": "y"})
    client.flush()
    letters: list[dict[str, Any]] = []

    def dead_lettered() -> bool:
        listed = cdp(pipeline, "destinations", "dead-letters", "e2e-flaky")
        assert listed.returncode == 0, listed.stderr
        letters[:] = [json.loads(line) for line in listed.stdout.splitlines()]
        return bool(letters)

    wait_for(dead_lettered)
    assert letters[0]["reason"].startswith("permanent failure: HTTP 400"), letters
    assert not changes_of(receiver, "/flaky", refused)

    status = json.loads(cdp(pipeline, "destinations", "status", "e2e-flaky").stdout)
    assert status["dead_letters"] == 1 and status["dead_lettered"] >= 1 and status["delivered"] >= 1
    assert status["retried"] >= 2 and status["last_error"].startswith("HTTP 400")
    through_api = admin(pipeline, "GET", "/destinations/e2e-flaky?hours=2")
    assert through_api["dead_letters"] == 1 and through_api["delivered"] == status["delivered"]
    assert {d["destination"] for d in admin(pipeline, "GET", "/destinations")["data"]} >= {
        "e2e-hooks", "e2e-flaky", "e2e-exports", "e2e-slack", "e2e-sync"}

    redriven = cdp(pipeline, "destinations", "redrive", "e2e-flaky")
    assert redriven.returncode == 0 and "redrove 1 message" in redriven.stdout, redriven
    wait_for(lambda: changes_of(receiver, "/flaky", refused))
    (delivered,) = changes_of(receiver, "/flaky", refused)
    assert delivered.headers.get("Idempotency-Key") == delivered.body["message_id"]
    listed = cdp(pipeline, "destinations", "list")
    flaky = next(json.loads(line) for line in listed.stdout.splitlines() if "e2e-flaky" in line)
    assert flaky["dead_letters"] == 0


def synced(receiver: Receiver) -> list[dict[str, Any]]:
    """The batch sync's messages to /sync (the real-time ones have other ids)."""
    return [r.body for r in receiver.received("/sync") if str(r.body.get("message_id", "")).startswith("sync:")]


def test_the_scheduled_sync_sends_everyone_first_and_only_the_difference_on_its_second_run(
        pipeline: Pipeline, receiver: Receiver, audiences: None) -> None:
    client = sdk(pipeline)
    users = [f"sync-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for user in users[:3]:
        client.identify(user, {"sync_tier": "in"})
    client.flush()
    wait_for(lambda: len([r for r in receiver.received("/sync") if r.body.get("kind")]) >= 3)  # real time
    pipeline.drain(timeout=120)
    schedule = pipeline.stack.activation.syncs["e2e-sync"]

    first = schedule.tick()
    assert not first.failed, first
    assert first.result["audiences"][SYNC_AUDIENCE]["outcome"] == "done", first.result
    full = synced(receiver)
    assert sorted(m["transition"] for m in full) == ["entered"] * 3
    assert all(m["audience_id"] == SYNC_AUDIENCE and m["profile"]["identifiers"]["user_id"][0] in users
               for m in full)

    client.identify(users[0], {"sync_tier": "out"})  # leaves
    client.identify(users[3], {"sync_tier": "in"})  # joins
    client.flush()
    wait_for(lambda: len([r for r in receiver.received("/sync") if r.body.get("kind")]) >= 3 + 3 + 2)
    pipeline.drain(timeout=120)
    second = schedule.tick()
    assert second.result["audiences"][SYNC_AUDIENCE]["outcome"] == "done", second.result
    diff = synced(receiver)[len(full):]
    changes = sorted((m["profile"]["identifiers"]["user_id"][0], m["transition"]) for m in diff)
    assert changes == sorted([(users[0], "exited"), (users[3], "entered")]), changes
    status = json.loads(cdp(pipeline, "destinations", "syncs", "e2e-sync", SYNC_AUDIENCE).stdout)
    assert status["status"] == "done" and status["sync_id"] == second.result["audiences"][SYNC_AUDIENCE]["sync_id"]
    third = schedule.tick()  # nothing changed since
    assert synced(receiver)[len(full) + len(diff):] == [] and third.result["audiences"][SYNC_AUDIENCE]["adds"] == 0
    # The delivery log has the runs: totals and each audience's last run.
    logged = admin(pipeline, "GET", "/destinations/e2e-sync?hours=2")
    assert (logged["sync_runs"], logged["sync_adds"], logged["sync_removes"]) == (3, 4, 1), logged
    assert logged["syncs"][SYNC_AUDIENCE]["outcome"] == "done"
    assert logged["syncs"][SYNC_AUDIENCE]["sync_id"] == third.result["audiences"][SYNC_AUDIENCE]["sync_id"]


def test_the_s3_exports_sync_writes_the_audiences_full_member_file_with_its_manifest(
        pipeline: Pipeline, receiver: Receiver, audiences: None) -> None:
    client = sdk(pipeline)
    user = f"full-{uuid.uuid4().hex[:8]}"
    client.identify(user, {"activation_tier": "gold", "email": f"{user}@example.com"})
    client.flush()
    wait_for(lambda: changes_of(receiver, "/hooks", user))
    pipeline.drain(timeout=120)
    profile_id = changes_of(receiver, "/hooks", user)[0].body["profile"]["profile_id"]

    ticked = pipeline.stack.activation.syncs["e2e-exports"].tick()
    assert not ticked.failed, ticked
    written = ticked.result["audiences"][ACTIVATION_AUDIENCE]["full_export"]
    assert written["key"].startswith(f"cdp/e2e-exports/full/{ACTIVATION_AUDIENCE}/"), written
    s3 = pipeline.stack.session().client("s3")
    text = s3.get_object(Bucket=EXPORT_BUCKET, Key=written["key"])["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == written["rows"] >= 1
    mine = [row for row in rows if row["profile_id"] == profile_id]
    assert mine and mine[0]["email"] == f"{user}@example.com" and mine[0]["action"] == "add"
    manifest_key = written["key"].removesuffix(".csv") + ".manifest.json"
    manifest = json.loads(s3.get_object(Bucket=EXPORT_BUCKET, Key=manifest_key)["Body"].read())
    assert manifest["row_count"] == written["rows"] and manifest["kind"] == "full"
