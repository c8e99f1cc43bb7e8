"""Profile tallies: folding each event exactly once by stream position, merges, the live_from cut."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.segmentation.catalog import ActiveSpec, Catalog, catalog_from_items
from cdp.segmentation.definitions import AggregateSpec, AudienceDefinition, ComputedTraitDefinition
from cdp.segmentation.tallies import (
    StreamPosition,
    Tallies,
    aggregate_states,
    facts_from_item,
    fold_events,
    merge_tallies,
    profile_of_item,
    tallies_from_json,
    tallies_to_json,
)

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
COUNT = AggregateSpec(kind="count", event_type="page", event="Pricing", window={"days": 7})
TOTAL = AggregateSpec(kind="sum", event="Order Completed", property="total")
SPECS = {COUNT.aggregate_id(): ActiveSpec(COUNT, "g1", "2026-01-01T00:00:00.000Z"),
         TOTAL.aggregate_id(): ActiveSpec(TOTAL, "g1", "2026-01-01T00:00:00.000Z")}


def page(n: int, day: int = 27, received: str | None = None) -> dict[str, Any]:
    at = f"2026-11-{day:02d}T10:00:00.000Z"
    return {"type": "page", "name": "Pricing", "messageId": f"p{n}", "timestamp": at, "receivedAt": received or at}


def order(n: int, total: float) -> dict[str, Any]:
    at = "2026-11-20T10:00:00.000Z"
    return {"type": "track", "event": "Order Completed", "messageId": f"o{n}", "timestamp": at,
            "receivedAt": at, "properties": {"total": total}}


def counts(tallies: Tallies) -> tuple[int, float]:
    states = aggregate_states(tallies, SPECS)
    from cdp.segmentation import aggregates
    return (aggregates.value(states[COUNT.aggregate_id()], NOW), aggregates.value(states[TOTAL.aggregate_id()], NOW))


def at(seq: int, key: str = "k1") -> StreamPosition:
    return StreamPosition(key, seq)


def test_an_event_delivered_again_after_its_fold_is_not_counted_twice():
    batch = [(at(10), page(1)), (at(11), order(1, 19.99)), (at(12), page(2))]
    once = fold_events(Tallies(), SPECS, batch, NOW)
    assert counts(once) == (2, 19.99)
    assert fold_events(once, SPECS, batch, NOW) == once
    assert fold_events(once, SPECS, batch[1:], NOW) == once  # a bisected retry


def test_events_after_the_mark_still_count_and_other_keys_are_independent():
    first = fold_events(Tallies(), SPECS, [(at(10), page(1))], NOW)
    later = fold_events(first, SPECS, [(at(10), page(1)), (at(11), page(2)), (at(5, "k2"), page(3))], NOW)
    assert counts(later)[0] == 3
    assert set(later.marks) == {"k1", "k2"}


def test_events_no_spec_selects_leave_no_mark_and_change_nothing():
    other = {"type": "track", "event": "Signed In", "messageId": "s", "timestamp": "2026-11-27T10:00:00Z",
             "receivedAt": "2026-11-27T10:00:00Z"}
    assert fold_events(Tallies(), SPECS, [(at(10), other)], NOW) == Tallies()


def test_events_received_before_live_from_are_left_to_the_backfill():
    specs = {COUNT.aggregate_id(): ActiveSpec(COUNT, "g1", "2026-11-27T10:00:00.000Z")}
    tallies = fold_events(Tallies(), specs, [(at(1), page(1, received="2026-11-27T09:59:59.999Z")),
                                             (at(2), page(2, received="2026-11-27T10:00:00+00:00"))], NOW)
    assert tallies.states[COUNT.aggregate_id()]["b"] == {"2026-11-27": [1]}


def test_a_state_of_an_older_generation_is_discarded_not_continued():
    old = fold_events(Tallies(), SPECS, [(at(1), page(1))], NOW)
    renewed = {COUNT.aggregate_id(): ActiveSpec(COUNT, "g2", "2026-01-01T00:00:00.000Z")}
    tallies = fold_events(old, renewed, [(at(2), page(2))], NOW)
    assert tallies.states[COUNT.aggregate_id()] == {"k": "count", "g": "g2", "b": {"2026-11-27": [1]}}


def test_day_buckets_outside_the_window_are_pruned_and_old_marks_dropped():
    old = fold_events(Tallies(), SPECS, [(at(1, "old"), page(1, day=2))], datetime(2026, 11, 2, tzinfo=UTC))
    tallies = fold_events(old, SPECS, [(at(2), page(2))], NOW)
    assert tallies.states[COUNT.aggregate_id()]["b"] == {"2026-11-27": [1]}
    assert set(tallies.marks) == {"k1"}


def test_merging_two_profiles_adds_their_states_and_keeps_the_highest_marks():
    a = fold_events(Tallies(), SPECS, [(at(10), page(1)), (at(11), order(1, 10))], NOW)
    b = fold_events(Tallies(), SPECS, [(at(12), page(2)), (at(3, "k2"), order(2, 5.5))], NOW)
    merged = merge_tallies(a, b)
    assert counts(merged) == (2, 15.5)
    assert merged.marks["k1"][0] == "12" and merged.marks["k2"][0] == "3"
    assert merge_tallies(b, a) == merged
    assert tallies_from_json(tallies_to_json(merged)) == merged


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_any_redelivery_pattern_counts_each_event_once(keys: list[int], rnd: random.Random):
    """Kinesis redelivers suffixes of a partition key's records (retries, bisected halves),
    in order per key; however the deliveries interleave, each event counts once."""
    stream = [(StreamPosition(f"k{key}", seq), page(seq)) for seq, key in enumerate(keys, start=100)]
    tallies = Tallies()
    delivered = 0
    while delivered < len(stream):
        end = rnd.randint(delivered + 1, len(stream))
        start = rnd.randint(0, delivered)  # a redelivery starts at or before the new records
        tallies = fold_events(tallies, SPECS, stream[start:end], NOW)
        delivered = end
    assert counts(tallies)[0] == len(stream)


def _item(kind: str, ident: str, definition: dict[str, Any]) -> dict[str, Any]:
    return {"pk": {"S": f"{kind}#{ident}"}, "definition": {"S": json.dumps(definition)}, "version": {"N": "1"}}


def _spec_item(spec: AggregateSpec, gen: str = "g1") -> dict[str, Any]:
    return {"pk": {"S": f"spec#{spec.aggregate_id()}"}, "spec": {"S": spec.model_dump_json()},
            "gen": {"S": gen}, "live_from": {"S": "2026-01-01T00:00:00.000Z"}}


def test_the_catalog_keeps_only_registered_specs_some_definition_reads():
    audience = {"id": "pricing", "name": "Pricing", "condition": {
        "type": "event", "event_type": "page", "event": "Pricing", "count": {"op": "at_least", "n": 2},
        "window": {"days": 7}}}
    trait = {"id": "ltv", "name": "LTV", "aggregate": TOTAL.model_dump(mode="json", exclude_none=True)}
    stale = AggregateSpec(kind="count", event="Gone")
    catalog = catalog_from_items([_item("audience", "pricing", audience), _item("computed_trait", "ltv", trait),
                                  _spec_item(COUNT), _spec_item(stale),
                                  _item("audience", "broken", {"id": "broken"})])
    assert set(catalog.audiences) == {"pricing"} and set(catalog.computed_traits) == {"ltv"}
    assert set(catalog.specs) == {COUNT.aggregate_id()}  # ltv's spec is not registered yet
    assert catalog.computed_spec_id("ltv") == TOTAL.aggregate_id()


def test_facts_of_a_profile_item_give_traits_computed_values_and_counters():
    catalog = Catalog(
        audiences={"a": AudienceDefinition.model_validate({"id": "a", "name": "A", "condition": {
            "type": "trait", "trait": "plan", "op": "equals", "value": "pro"}})},
        computed_traits={"ltv": ComputedTraitDefinition(id="ltv", name="LTV", aggregate=TOTAL)},
        specs=SPECS)
    tallies = fold_events(Tallies(), SPECS, [(at(1), order(1, 30)), (at(2), page(1))], NOW)
    item = {"pk": {"S": "prof#p1"}, "status": {"S": "live"},
            "state": {"S": json.dumps({"traits": {"plan": ["pro", "2026-11-01T00:00:00Z", "m"]}})},
            "agg": {"S": tallies_to_json(tallies)}}
    facts = facts_from_item(item, catalog, NOW)
    assert facts.traits == {"plan": "pro"} and facts.computed == {"ltv": 30}
    assert profile_of_item(item) == ("p1", True)
    assert profile_of_item({"pk": {"S": "ident#anonymous_id:x"}, "profile_id": {"S": "a.eA"},
                            "solo": {"BOOL": True}}) == ("a.eA", True)
    assert profile_of_item({"pk": {"S": "ident#anonymous_id:x"}, "profile_id": {"S": "p1"}}) is None
