"""The committed sample events of activation are what its functions understand."""

from __future__ import annotations

import json
from pathlib import Path

from cdp.activation.router import membership_change

EVENTS = Path(__file__).resolve().parents[3] / "events"


def test_the_memberships_stream_sample_holds_an_entry_and_an_exit() -> None:
    records = json.loads((EVENTS / "dynamodb_memberships_stream.json").read_text())["Records"]
    changes = [membership_change(r["dynamodb"].get("OldImage"), r["dynamodb"].get("NewImage")) for r in records]
    assert [(c.audience_id, c.transition, c.version) for c in changes if c] == [
        ("pricing-page-interest", "entered", 12), ("trial-users", "exited", 12)]


def test_the_fifo_destination_sample_is_grouped_by_profile_and_deduplicated_by_change() -> None:
    records = json.loads((EVENTS / "sqs_fifo_destination_batch.json").read_text())["Records"]
    for record in records:
        body = json.loads(record["body"])
        assert record["attributes"]["MessageGroupId"] == body["profile_id"]
        assert record["attributes"]["MessageDeduplicationId"] == body["message_id"]
