"""The delivery log's figures (cdp.activation.delivery_log): latency buckets, percentiles read
back from them, when a message's change or event happened, and the summary over hours."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.activation.delivery_log import (
    COUNTERS,
    LATENCY_BOUNDS_S,
    SYNC_COUNTERS,
    DeliveryCounts,
    bucket_name,
    bucket_of,
    origin_time,
    percentile,
    summary,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ABOVE = len(LATENCY_BOUNDS_S)  # the bucket above every bound


@pytest.mark.parametrize(("seconds", "bucket"), [
    (-5, 0), (0, 0), (0.25, 0), (0.2501, 1), (0.5, 1), (1, 2), (59.9, 8), (60, 8), (60.1, 9),
    (4 * 3600, ABOVE - 1), (4 * 3600 + 0.001, ABOVE), (10**9, ABOVE),
])
def test_a_latency_falls_in_the_bucket_whose_upper_bound_holds_it(seconds: float, bucket: int) -> None:
    assert bucket_of(seconds) == bucket


@given(st.floats(min_value=0, max_value=10**7, allow_nan=False))
def test_buckets_are_bounded_above_by_their_bound_and_below_by_the_previous(seconds: float) -> None:
    index = bucket_of(seconds)
    if index < ABOVE:
        assert seconds <= LATENCY_BOUNDS_S[index]
    if index > 0:
        assert seconds > LATENCY_BOUNDS_S[index - 1]


def test_bucket_names_sort_as_the_buckets() -> None:
    names = [bucket_name(i) for i in range(ABOVE + 1)]
    assert names[:2] == ["lat_00", "lat_01"] and names == sorted(names)


def test_no_data_has_no_percentile() -> None:
    assert percentile([0] * (ABOVE + 1), 0.5) is None


def test_a_percentile_above_the_last_bound_is_infinite() -> None:
    histogram = [0] * (ABOVE + 1)
    histogram[ABOVE] = 3
    histogram[0] = 1
    assert percentile(histogram, 0.99) == math.inf and percentile(histogram, 0.25) == 0.25


@settings(max_examples=300)
@given(values=st.lists(st.floats(min_value=0, max_value=30_000, allow_nan=False), min_size=1, max_size=200),
       fraction=st.one_of(st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]), st.floats(min_value=0.01, max_value=1)))
def test_a_percentile_is_the_bound_of_the_bucket_of_the_nearest_rank_value(values: list[float],
                                                                           fraction: float) -> None:
    counts = DeliveryCounts()
    for value in values:
        counts.observe_latency(value)
    rank = max(1, math.ceil(Fraction(repr(fraction)) * len(values)))  # nearest rank of the fraction as written
    nearest = sorted(values)[rank - 1]
    index = bucket_of(nearest)
    expected = LATENCY_BOUNDS_S[index] if index < ABOVE else math.inf
    found = percentile(counts.latencies, fraction)
    assert found == expected
    assert found is not None and found >= nearest  # an overestimate, never an underestimate


# --- origin_time ---------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    ({"kind": "audience_membership", "at": "2026-12-06T11:00:00.000Z"}, datetime(2026, 12, 6, 11, tzinfo=UTC)),
    ({"kind": "audience_membership", "at": "2026-12-06T13:00:00+02:00"}, datetime(2026, 12, 6, 11, tzinfo=UTC)),
    ({"kind": "audience_membership", "at": "2026-12-06T11:00:00"}, None),  # no zone: not guessed
    ({"kind": "audience_membership", "at": "yesterday"}, None),
    ({"kind": "audience_membership", "at": None}, None),
    ({"kind": "audience_membership"}, None),
    ({"kind": "event", "event": {"receivedAt": "2026-12-06T11:30:00Z", "timestamp": "2026-12-06T11:00:00Z"}},
     datetime(2026, 12, 6, 11, 30, tzinfo=UTC)),
    ({"kind": "event", "event": {"timestamp": "2026-12-06T11:00:00Z"}}, datetime(2026, 12, 6, 11, tzinfo=UTC)),
    ({"kind": "event", "event": {"receivedAt": "bad", "timestamp": "2026-12-06T11:00:00Z"}},
     datetime(2026, 12, 6, 11, tzinfo=UTC)),
    ({"kind": "event"}, None),
])
def test_the_origin_of_a_message_is_its_changes_or_events_time(body: dict, expected: datetime | None) -> None:
    assert origin_time(body) == expected


# --- DeliveryCounts ------------------------------------------------------------------------

def test_observe_counts_the_latency_of_messages_that_say_when_they_started() -> None:
    counts = DeliveryCounts()
    counts.observe([
        {"kind": "audience_membership", "at": (NOW - timedelta(seconds=2)).isoformat()},
        {"kind": "audience_membership", "at": (NOW - timedelta(hours=5)).isoformat()},
        {"kind": "event", "event": {"receivedAt": (NOW - timedelta(milliseconds=100)).isoformat()}},
        {"kind": "audience_membership"},  # no time: not counted
        {"kind": "audience_membership", "at": (NOW + timedelta(seconds=3)).isoformat()},  # clock skew: 0 s
    ], NOW)
    expected = [0] * (ABOVE + 1)
    for bucket in (bucket_of(2), ABOVE, 0, 0):
        expected[bucket] += 1
    assert counts.latencies == expected


def test_counts_are_empty_until_a_counter_is_set() -> None:
    counts = DeliveryCounts()
    assert counts.empty
    counts.observe_latency(1)
    assert counts.empty  # latencies alone come with delivered messages
    for name in COUNTERS:
        assert not DeliveryCounts(**{name: 1}).empty


# --- summary -------------------------------------------------------------------------------

def test_summary_adds_the_hours_reads_percentiles_and_keeps_the_newest_error() -> None:
    items = [
        {"destination_id": "d", "hour": "2026-12-06T10", "attempts": Decimal(10), "delivered": Decimal(8),
         "retried": Decimal(2), bucket_name(0): Decimal(7), bucket_name(5): Decimal(1),
         "last_error": "HTTP 503", "last_error_at": "2026-12-06T10:59:00Z"},
        {"destination_id": "d", "hour": "2026-12-06T11", "attempts": Decimal(5), "delivered": Decimal(3),
         "dead_lettered": Decimal(1), "held": Decimal(1), "not_sent": Decimal(1), bucket_name(ABOVE): Decimal(2),
         "last_error": "permanent failure: HTTP 400", "last_error_at": "2026-12-06T11:05:00Z"},
        {"destination_id": "d", "hour": "2026-12-06T09", "attempts": Decimal(1), "delivered": Decimal(1),
         "last_error": "older", "last_error_at": "2026-12-06T09:00:00Z"},
    ]
    found = summary(items)
    assert {name: found[name] for name in COUNTERS} == {"attempts": 16, "delivered": 12, "retried": 2,
                                                        "dead_lettered": 1, "held": 1, "not_sent": 1}
    assert found["latency_p50_s"] == LATENCY_BOUNDS_S[0]  # 7 of 10 observations in the first bucket
    assert found["latency_p99_s"] == math.inf
    assert (found["last_error"], found["last_error_at"]) == ("permanent failure: HTTP 400", "2026-12-06T11:05:00Z")


def test_summary_of_nothing() -> None:
    assert summary([]) == {**dict.fromkeys(COUNTERS + SYNC_COUNTERS, 0), "latency_p50_s": None,
                           "latency_p99_s": None, "last_error": None, "last_error_at": None, "syncs": {}}


def test_summary_adds_the_sync_counters_and_keeps_each_audiences_newest_run() -> None:
    def run(outcome: str, at: str, adds: int) -> dict[str, object]:
        return {"outcome": outcome, "at": at, "adds": Decimal(adds), "removes": Decimal(0), "failed": Decimal(0)}

    items = [
        {"hour": "2026-12-06T11", "sync_runs": Decimal(2), "sync_adds": Decimal(30), "sync_removes": Decimal(4),
         "sync:pro": run("done", "2026-12-06T11:10:00Z", 10), "sync:gold": run("stopped", "2026-12-06T11:00:00Z", 20)},
        {"hour": "2026-12-06T10", "sync_runs": Decimal(1), "sync_adds": Decimal(5), "sync_failed": Decimal(1),
         "sync:pro": run("stopped", "2026-12-06T10:59:00Z", 5)},
    ]
    found = summary(items)
    assert {name: found[name] for name in SYNC_COUNTERS} == {"sync_runs": 3, "sync_adds": 35, "sync_removes": 4,
                                                             "sync_failed": 1}
    assert found["syncs"] == {"gold": {"outcome": "stopped", "at": "2026-12-06T11:00:00Z", "adds": 20,
                                       "removes": 0, "failed": 0},
                              "pro": {"outcome": "done", "at": "2026-12-06T11:10:00Z", "adds": 10,
                                      "removes": 0, "failed": 0}}
