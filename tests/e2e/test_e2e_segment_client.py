"""The real segment-analytics-python client against the local stack, end to end.

Every event sent must arrive intact and exactly once (by messageId) in the events
table and in the S3 archive.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import segment.analytics as segment_analytics
from e2e_pipeline import Pipeline

pytestmark = pytest.mark.e2e


def new_client(pipeline: Pipeline, errors: list[Any], **options: Any) -> segment_analytics.Client:
    return segment_analytics.Client(
        pipeline.write_key, host=pipeline.api_url, max_retries=2,
        on_error=lambda error, batch: errors.append((error, batch)), **options)


def assert_stored_once(pipeline: Pipeline, sent: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every sent messageId is stored exactly once in the table and the archive; returns the stored events."""
    pipeline.drain()
    stored = pipeline.stored()
    missing_table = sorted(set(sent) - set(stored.table))
    missing_archive = sorted(set(sent) - set(stored.archive))
    assert not missing_table, f"{len(missing_table)} never reached the events table: {missing_table[:5]}"
    assert not missing_archive, f"{len(missing_archive)} never reached the archive: {missing_archive[:5]}"
    twice_table = {m: len(stored.table[m]) for m in sent if len(stored.table[m]) != 1}
    twice_archive = {m: len(stored.archive[m]) for m in sent if len(stored.archive[m]) != 1}
    assert not twice_table, f"stored more than once in the table: {twice_table}"
    assert not twice_archive, f"archived more than once: {twice_archive}"
    for message_id in sent:
        assert stored.table[message_id][0] == stored.archive[message_id][0]
    return {m: stored.table[m][0] for m in sent}


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_all_six_call_types_arrive_intact_and_once(pipeline: Pipeline, gzip: bool) -> None:
    errors: list[Any] = []
    client = new_client(pipeline, errors, gzip=gzip, sync_mode=True)
    run = uuid.uuid4().hex[:8]
    user, anon, group = f"user-{run}", f"anon-{run}", f"acct-{run}"
    calls = [
        client.identify(user, {"email": f"{run}@example.com", "plan": "gold", "logins": 3},
                        anonymous_id=anon),
        client.track(user, "Order Completed", {"order_id": f"o-{run}", "revenue": 27.5,
                                               "products": [{"sku": "A1", "quantity": 2}]}),
        client.page(user, category="Docs", name="Quickstart", properties={"path": "/docs/quickstart"}),
        client.screen(user, category="Orders", name="Order Status", properties={"status": "dispatched"}),
        client.group(user, group, {"name": "Analytical Engines", "employees": 42}),
        client.alias(f"old-{run}", user),
    ]
    # sync_mode posts each call before returning (and has no consumer thread to shut down).

    assert errors == []
    assert all(success for success, _msg in calls)
    sent = {msg["messageId"]: msg for _success, msg in calls}
    stored = assert_stored_once(pipeline, sent)

    by_type = {event["type"]: event for event in stored.values()}
    assert set(by_type) == {"identify", "track", "page", "screen", "group", "alias"}
    assert by_type["identify"]["traits"] == {"email": f"{run}@example.com", "plan": "gold", "logins": 3}
    assert by_type["identify"]["anonymousId"] == anon
    assert by_type["track"]["event"] == "Order Completed"
    assert by_type["track"]["properties"] == {"order_id": f"o-{run}", "revenue": 27.5,
                                              "products": [{"sku": "A1", "quantity": 2}]}
    assert by_type["page"]["name"] == "Quickstart"
    assert by_type["page"]["properties"]["path"] == "/docs/quickstart"
    assert by_type["screen"]["name"] == "Order Status"
    assert by_type["group"]["groupId"] == group
    assert by_type["group"]["traits"] == {"name": "Analytical Engines", "employees": 42}
    assert by_type["alias"]["previousId"] == f"old-{run}"
    for event in stored.values():
        assert event["userId"] == user
        assert event["receivedAt"] and event["timestamp"]
        assert event["context"]["library"]["name"] == "analytics-python"


def test_a_thousand_events_in_batches_arrive_intact_and_exactly_once(pipeline: Pipeline) -> None:
    errors: list[Any] = []
    client = new_client(pipeline, errors, gzip=True, upload_size=250, upload_interval=0.05)
    run = uuid.uuid4().hex[:8]
    sent: dict[str, dict[str, Any]] = {}
    for index in range(1000):
        success, msg = client.track(f"bulk-{run}-{index % 37}", "Item Scanned",
                                    {"index": index, "run": run, "label": f"ítem №{index}"})
        assert success
        sent[msg["messageId"]] = msg
    client.flush()
    client.join()

    assert errors == []
    stored = assert_stored_once(pipeline, sent)
    for message_id, msg in sent.items():
        event = stored[message_id]
        assert event["properties"] == msg["properties"]
        assert event["userId"] == msg["userId"]
        assert event["event"] == "Item Scanned"
