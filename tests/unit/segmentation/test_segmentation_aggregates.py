"""Time-bucketed aggregates: every kind, the window rule, pruning, the stored form, and
(hypothesis) order-insensitivity of fold/merge and equality with a from-scratch computation."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.segmentation.aggregates import (
    UNIQUE_CAP,
    AggregateState,
    canonical,
    empty,
    fold,
    from_json,
    merge,
    prune,
    to_json,
    value,
)
from cdp.segmentation.definitions import AggregateSpec

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def order(at: str, total: Any = None, message_id: str = "", **properties: Any) -> dict[str, Any]:
    if total is not None:
        properties["total"] = total
    return {"type": "track", "event": "Order Completed", "timestamp": at, "messageId": message_id or at,
            "properties": properties}


def spec(kind: str, days: int | None = None, **extra: Any) -> AggregateSpec:
    data: dict[str, Any] = {"kind": kind, "event": "Order Completed", **extra}
    if kind != "count":
        data.setdefault("property", "total")
    if days is not None:
        data["window"] = {"days": days}
    return AggregateSpec.model_validate(data)


def folded(aggregate: AggregateSpec, events: list[dict[str, Any]]) -> AggregateState:
    state = empty(aggregate)
    for event in events:
        state = fold(state, event)
    return state


EVENTS = [
    order("2026-11-20T10:00:00Z", 10, "m1", category="shoes"),
    order("2026-11-22T00:00:00Z", 19.99, "m2", category="hats"),
    order("2026-11-27T23:59:59Z", 5, "m3", category="hats"),
    order("2026-11-28T08:00:00Z", "n/a", "m4", category="shoes"),
    order("2026-11-28T09:00:00Z", None, "m5", category="hats"),
]


@pytest.mark.parametrize(("kind", "days", "expected"), [
    ("count", None, 5),
    ("count", 7, 4),  # 2026-11-22 .. 2026-11-28
    ("count", 1, 2),
    ("sum", None, 34.99),
    ("sum", 7, 24.99),
    ("average", None, pytest.approx(34.99 / 3)),
    ("min", 7, 5),
    ("max", None, 19.99),
    ("first", None, 10),
    ("last", None, "n/a"),
    ("first", 7, 19.99),
])
def test_numeric_and_ordered_kinds_over_their_window(kind: str, days: int | None, expected: Any) -> None:
    assert value(folded(spec(kind, days), EVENTS), NOW) == expected


def test_most_frequent_unique_and_unique_count() -> None:
    assert value(folded(spec("most_frequent", property="category"), EVENTS), NOW) == "hats"
    assert value(folded(spec("unique", property="category"), EVENTS), NOW) == ["hats", "shoes"]
    assert value(folded(spec("unique_count", 1, property="category"), EVENTS), NOW) == 2
    assert value(folded(spec("unique", 3, property="total"), EVENTS), NOW) == ["n/a", 5]  # by canonical JSON


def test_most_frequent_ties_go_to_the_smallest_canonical_value() -> None:
    events = [order("2026-11-28T01:00:00Z", message_id="a", category="b"),
              order("2026-11-28T02:00:00Z", message_id="b", category="a")]
    assert value(folded(spec("most_frequent", property="category"), events), NOW) == "a"


def test_first_and_last_break_timestamp_ties_by_message_id() -> None:
    events = [order("2026-11-28T01:00:00Z", 1, "b"), order("2026-11-28T01:00:00+00:00", 2, "a")]
    assert value(folded(spec("first"), events), NOW) == 2
    assert value(folded(spec("last"), list(reversed(events))), NOW) == 1


@pytest.mark.parametrize(("kind", "nothing"), [
    ("count", 0), ("sum", 0), ("average", None), ("min", None), ("max", None), ("first", None),
    ("last", None), ("most_frequent", None), ("unique", []), ("unique_count", 0),
])
def test_an_empty_history_has_the_neutral_value(kind: str, nothing: Any) -> None:
    assert value(empty(spec(kind, 7)), NOW) == nothing


def test_a_seven_day_window_is_the_day_of_now_and_the_six_before() -> None:
    counter = spec("count", 7)
    state = folded(counter, [order("2026-11-22T00:00:00Z"), order("2026-11-21T23:59:59.999Z")])
    assert value(state, datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC)) == 1
    assert value(state, datetime(2026, 11, 29, 0, 0, tzinfo=UTC)) == 0
    assert value(state, datetime(2026, 11, 27, 0, 0, tzinfo=UTC)) == 2


def test_events_after_the_day_of_now_are_not_counted_yet() -> None:
    state = folded(spec("count", 7), [order("2026-11-29T00:00:00Z")])
    assert value(state, NOW) == 0
    assert value(state, NOW + timedelta(days=1)) == 1


def test_offsets_are_bucketed_by_their_utc_day() -> None:
    state = folded(spec("count", 1), [order("2026-11-28T01:00:00+03:00")])  # 2026-11-27 22:00 UTC
    assert list(state.buckets) == ["2026-11-27"]


def test_between_dates_counts_only_events_of_those_days_whatever_now() -> None:
    counter = AggregateSpec.model_validate({"kind": "count", "event": "Order Completed",
                                            "window": {"from": "2026-11-20", "to": "2026-11-22"}})
    state = folded(counter, EVENTS)
    assert value(state, NOW) == 2
    assert value(state, datetime(2030, 1, 1, tzinfo=UTC)) == 2


def test_selection_by_type_name_and_property_filters() -> None:
    counter = AggregateSpec.model_validate({"kind": "count", "event_type": "page", "event": "Pricing",
                                            "where": [{"property": "plan.tier", "op": "in", "values": ["pro"]}]})
    T = "2026-11-28T01:00:00Z"
    events = [
        {"type": "page", "name": "Pricing", "timestamp": T, "properties": {"plan": {"tier": "pro"}}},
        {"type": "page", "name": "Pricing", "timestamp": T, "properties": {"plan": {"tier": "x"}}},
        {"type": "page", "name": "Pricing", "timestamp": T},
        {"type": "page", "name": "Home", "timestamp": T, "properties": {"plan": {"tier": "pro"}}},
        {"type": "track", "event": "Pricing", "timestamp": T, "properties": {"plan": {"tier": "pro"}}},
    ]
    assert value(folded(counter, events), NOW) == 1


def test_an_event_without_a_timestamp_uses_received_at_and_without_either_is_refused() -> None:
    counter = spec("count", 1)
    event = {"type": "track", "event": "Order Completed", "receivedAt": "2026-11-28T01:00:00Z"}
    assert value(fold(empty(counter), event), NOW) == 1
    with pytest.raises(ValueError, match="no timestamp"):
        fold(empty(counter), {"type": "track", "event": "Order Completed"})


def test_prune_drops_only_days_before_the_window() -> None:
    state = folded(spec("sum", 7), EVENTS)
    pruned = prune(state, NOW)
    assert sorted(state.buckets) == ["2026-11-20", "2026-11-22", "2026-11-27"]  # 11-28 has no number
    assert sorted(pruned.buckets) == ["2026-11-22", "2026-11-27"]
    assert value(pruned, NOW) == value(state, NOW)
    all_time = folded(spec("sum"), EVENTS)
    assert prune(all_time, NOW) is all_time


def test_unique_values_are_capped_deterministically() -> None:
    events = [order("2026-11-28T01:00:00Z", message_id=str(i), sku=f"{i:05d}") for i in range(UNIQUE_CAP + 5)]
    state = folded(spec("unique_count", property="sku"), list(reversed(events)))
    assert value(state, NOW) == UNIQUE_CAP
    assert value(folded(spec("unique", property="sku"), events), NOW)[-1] == f"{UNIQUE_CAP - 1:05d}"


def test_the_stored_form_is_compact_and_round_trips() -> None:
    total = spec("sum", 7)
    state = folded(total, EVENTS)
    stored = to_json(state)
    assert stored == {"b": {"2026-11-20": [1, 10], "2026-11-22": [1, 19.99], "2026-11-27": [1, 5]}}
    assert from_json(total, json.loads(json.dumps(stored))) == state
    huge = AggregateState(total, {"2026-11-28": [2, Decimal("0.10000000000000000000001")]})
    assert to_json(huge) == {"b": {"2026-11-28": [2, "0.10000000000000000000001"]}}
    assert from_json(total, to_json(huge)) == huge
    for kind in ("count", "first", "most_frequent", "unique", "max"):
        aggregate = spec(kind, property="category") if kind != "count" else spec(kind)
        state = folded(aggregate, EVENTS)
        assert from_json(aggregate, json.loads(json.dumps(to_json(state)))) == state


def test_sums_are_exact_decimals() -> None:
    events = [order("2026-11-28T01:00:00Z", 0.1, str(i)) for i in range(3)]
    assert value(folded(spec("sum"), events), NOW) == 0.3


def test_states_of_different_specs_do_not_merge() -> None:
    with pytest.raises(ValueError, match="different aggregate specs"):
        merge(empty(spec("count")), empty(spec("count", 7)))


# --- properties ---------------------------------------------------------------------

DAY0 = date(2026, 11, 1)
KINDS = ["count", "sum", "average", "min", "max", "first", "last", "most_frequent", "unique", "unique_count"]
property_values = st.one_of(
    st.none(), st.integers(-1000, 1000), st.decimals(-1000, 1000, places=2).map(float),
    st.sampled_from(["a", "b", "c", "d"]), st.booleans(),
)


@st.composite
def event_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 25))
    events = []
    for i in range(count):
        at = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(
            days=draw(st.integers(0, 40)), minutes=draw(st.integers(0, 60 * 24 - 1)))
        props = {} if draw(st.booleans()) and i % 3 == 0 else {"total": draw(property_values)}
        events.append({
            "type": draw(st.sampled_from(["track", "track", "track", "page"])),
            "event": draw(st.sampled_from(["Order Completed", "Order Completed", "Login"])),
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "messageId": f"m{i}",  # distinct: the pipeline dedupes upstream
            "properties": props,
        })
    return events


specs = st.builds(
    lambda kind, days, filtered: AggregateSpec.model_validate({
        "kind": kind, "event": "Order Completed", **({"property": "total"} if kind != "count" else {}),
        **({"window": {"days": days}} if days else {}),
        **({"where": [{"property": "total", "op": "exists"}]} if filtered else {}),
    }),
    st.sampled_from(KINDS), st.one_of(st.none(), st.integers(1, 45)), st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(aggregate=specs, events=event_lists(), data=st.data())
def test_folding_in_any_order_and_merging_any_split_gives_the_same_state(
    aggregate: AggregateSpec, events: list[dict[str, Any]], data: st.DataObject,
) -> None:
    whole = folded(aggregate, events)
    shuffled = data.draw(st.permutations(events))
    cut = data.draw(st.integers(0, len(events)))
    left, right = folded(aggregate, shuffled[:cut]), folded(aggregate, shuffled[cut:])
    assert merge(left, right) == whole
    assert merge(right, left) == whole
    third = data.draw(st.integers(0, cut))
    a, b, c = (folded(aggregate, part) for part in (shuffled[:third], shuffled[third:cut], shuffled[cut:]))
    assert merge(merge(a, b), c) == merge(a, merge(b, c)) == whole
    assert from_json(aggregate, json.loads(json.dumps(to_json(whole)))) == whole


def from_scratch(aggregate: AggregateSpec, events: list[dict[str, Any]], now: datetime) -> Any:
    """The aggregate computed directly from the events (the oracle)."""
    rows = []
    for event in events:
        if event["type"] != "track" or event["event"] != "Order Completed":
            continue
        if aggregate.where and event["properties"].get("total") is None:
            continue
        at = datetime.fromisoformat(event["timestamp"])
        if aggregate.window is not None:
            days = aggregate.window.days  # type: ignore[union-attr]
            if not now.date() - timedelta(days=days - 1) <= at.date() <= now.date():
                continue
        rows.append((at, event["messageId"], event["properties"].get("total")))
    kind = aggregate.kind
    if kind == "count":
        return len(rows)
    present = [r for r in rows if r[2] is not None]
    numbers = [r[2] for r in present if isinstance(r[2], int | float) and not isinstance(r[2], bool)]
    if kind == "sum":
        total = sum((Decimal(repr(n)) for n in numbers), Decimal(0))
        return int(total) if total == total.to_integral_value() else float(total)
    if kind == "average":
        return float(sum((Decimal(repr(n)) for n in numbers), Decimal(0)) / len(numbers)) if numbers else None
    if kind == "min":
        return min(numbers, default=None)
    if kind == "max":
        return max(numbers, default=None)
    if kind in ("first", "last"):
        ordered = sorted(present, key=lambda r: (r[0], r[1]))
        return (ordered[0] if kind == "first" else ordered[-1])[2] if ordered else None
    keys = [canonical(r[2]) for r in present]
    if kind == "most_frequent":
        counts = Counter(keys)
        return json.loads(min(counts, key=lambda k: (-counts[k], k))) if counts else None
    unique = sorted(set(keys))[:UNIQUE_CAP]
    return [json.loads(k) for k in unique] if kind == "unique" else len(unique)


@settings(max_examples=300, deadline=None)
@given(aggregate=specs, events=event_lists(), prune_first=st.booleans(), data=st.data())
def test_the_incremental_value_equals_a_from_scratch_computation(
    aggregate: AggregateSpec, events: list[dict[str, Any]], prune_first: bool, data: st.DataObject,
) -> None:
    days = aggregate.window.days if aggregate.window is not None else 1  # type: ignore[union-attr]
    hour = timedelta(hours=data.draw(st.integers(0, 23)))
    if events and data.draw(st.integers(0, 3)) > 0:
        # Right at a window's edge for one of the events: its last day in the window, or the first after.
        at = datetime.fromisoformat(data.draw(st.sampled_from(events))["timestamp"])
        day = datetime(at.year, at.month, at.day, tzinfo=UTC)
        now = day + timedelta(days=days - 1 + data.draw(st.integers(0, 1))) + hour
    else:
        now = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=data.draw(st.integers(-1, 50))) + hour
    state = folded(aggregate, events)
    if prune_first:
        state = prune(state, now)
    expected = from_scratch(aggregate, events, now)
    got = value(state, now)
    assert got == expected and type(got) is type(expected)
