"""The backfill function on moto: idle when nothing waits, waits for the settle time, then completes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest

from cdp import config, resources
from cdp.segmentation.catalog import SpecRegistry
from cdp.segmentation.definitions import AggregateSpec, ComputedTraitDefinition
from tests.conftest import load_handler

segment_backfill = load_handler("segment_backfill")
SCHEDULED = {"version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events",
             "account": "123456789012", "time": "2026-11-28T10:00:00Z", "region": "us-east-1",
             "resources": ["arn:aws:events:us-east-1:123456789012:rule/SegmentBackfillSchedule"], "detail": {}}
LTV = ComputedTraitDefinition(id="ltv", name="ltv", aggregate=AggregateSpec(kind="sum", event="Order Completed",
                                                                             property="total"))


@pytest.fixture
def settle(monkeypatch: pytest.MonkeyPatch, aws: None) -> None:
    monkeypatch.setenv(config.ENV_VARS["backfill_settle_seconds"], "60")
    config.get_settings.cache_clear()
    segment_backfill.dependencies.cache_clear()
    yield
    config.get_settings.cache_clear()
    segment_backfill.dependencies.cache_clear()


def register(registered: datetime) -> None:
    """The definition and its spec, as the admin API stores them."""
    boto3.client("dynamodb").put_item(TableName=resources.SEGMENTS_TABLE.local_name, Item={
        "pk": {"S": f"computed_trait#{LTV.id}"}, "definition": {"S": LTV.model_dump_json()}, "version": {"N": "1"}})
    SpecRegistry(boto3.client("dynamodb"), resources.SEGMENTS_TABLE.local_name, cache_seconds=0,
                 now=lambda: registered).sync([LTV])


def test_with_nothing_pending_an_invocation_returns_idle(settle, lambda_context):
    assert segment_backfill.handler(SCHEDULED, lambda_context) == {"state": "idle", "finished": True}


def test_a_spec_waits_for_the_settle_time_then_is_backfilled(settle, lambda_context):
    register(datetime.now(UTC))  # live_from is 5 s ahead, then 60 s of settle
    assert segment_backfill.handler(SCHEDULED, lambda_context)["state"] == "waiting"
    register_past = datetime.now(UTC) - timedelta(minutes=5)
    SpecRegistry(boto3.client("dynamodb"), resources.SEGMENTS_TABLE.local_name, cache_seconds=0,
                 now=lambda: register_past).sync([])  # dropped, registered again in the past
    register(register_past)
    result = segment_backfill.handler(SCHEDULED, lambda_context)
    assert result["state"] == "done" and result["finished"] is True and result["run_id"]
    assert segment_backfill.handler(SCHEDULED, lambda_context)["state"] == "idle"


def test_the_deadline_leaves_a_margin_of_a_tenth_at_most_30_seconds(lambda_context):
    import time

    class Context:
        def __init__(self, ms: int) -> None:
            self.ms = ms

        def get_remaining_time_in_millis(self) -> int:
            return self.ms

    now = time.monotonic()
    assert segment_backfill.deadline_of(Context(300_000)) - now == pytest.approx(270, abs=1)
    assert segment_backfill.deadline_of(Context(5_000)) - now == pytest.approx(4.5, abs=0.5)
