"""The dependency index and the membership decisions of one profile change."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.segmentation.audience_events import audience_event, audience_message_id, person_of
from cdp.segmentation.evaluate import dependencies
from cdp.segmentation.membership import (
    Decision,
    DependencyIndex,
    Membership,
    _canonical,
    _same,
    change_candidates,
    changed_inputs,
    decide,
    memberships_needed,
    next_change,
    profile_change,
)
from cdp.segmentation.tallies import facts_from_item
from tests.segmentation_items import (
    NOW,
    agg_of,
    audience,
    catalog_of,
    computed_trait,
    home_item,
    merged_home_item,
    profile_item,
    track,
)

PRO = audience("pro", {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"})
BUYERS = audience("buyers", {"type": "event", "event": "Order Completed"})
PRO_BUYERS = audience("pro-buyers", {"type": "and", "conditions": [
    {"type": "audience", "audience": "pro"}, {"type": "audience", "audience": "buyers"}]})
NOT_PRO_BUYERS = audience("vip", {"type": "and", "conditions": [
    {"type": "audience", "audience": "pro-buyers"}, {"type": "trait", "trait": "vip", "op": "equals",
                                                     "value": True}]})
LTV = computed_trait("ltv", {"kind": "sum", "event": "Order Completed", "property": "total"})
BIG_SPENDERS = audience("big", {"type": "computed_trait", "trait": "ltv", "op": "gte", "value": 100})
DORMANT = audience("dormant", {"type": "event", "event": "Signed In", "count": {"op": "exactly", "n": 0},
                               "window": {"days": 7}})
ENTERPRISE = audience("enterprise", {"type": "account", "trait": "tier", "op": "equals", "value": "enterprise"})

CATALOG = catalog_of(PRO, BUYERS, PRO_BUYERS, NOT_PRO_BUYERS, LTV, BIG_SPENDERS, DORMANT, ENTERPRISE)
INDEX = DependencyIndex.of(CATALOG)


def member(audience_id: str, version: int = 1, changed: int = 1, **fields: Any) -> Membership:
    return Membership(audience_id, True, version, changed, entered_at="2026-11-01T00:00:00.000Z", **fields)


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.audience_id: d for d in decisions}


# --- the index ------------------------------------------------------------------------


def test_index_orders_every_audience_after_the_audiences_it_names() -> None:
    order = list(INDEX.order)
    assert order.index("pro") < order.index("pro-buyers") < order.index("vip")
    assert order.index("buyers") < order.index("pro-buyers")
    assert set(order) == set(CATALOG.audiences)


def test_a_trait_change_affects_its_audiences_and_their_dependents_transitively() -> None:
    assert INDEX.affected(traits=["plan"]) == [a for a in INDEX.order if a in {"pro", "pro-buyers", "vip"}]
    assert INDEX.affected(traits=["vip"]) == ["vip"]
    assert INDEX.affected(traits=["unrelated"]) == []


def test_an_aggregate_change_affects_event_conditions_and_computed_trait_conditions() -> None:
    spec_id = LTV.aggregate.aggregate_id()
    assert INDEX.affected(aggregates=[spec_id]) == ["big"]
    buyers_spec = next(iter(dependencies(BUYERS).aggregates))
    assert INDEX.affected(aggregates=[buyers_spec]) == [a for a in INDEX.order if a in {"buyers", "pro-buyers",
                                                                                         "vip"}]
    assert INDEX.affected(computed_traits=["ltv"]) == ["big"]


def test_index_marks_time_based_and_account_audiences() -> None:
    assert INDEX.time_based == {"dormant"}
    assert INDEX.account_based == {"enterprise"}
    nested = catalog_of(DORMANT, audience("dormant-pros", {"type": "audience", "audience": "dormant"}))
    assert DependencyIndex.of(nested).time_based == {"dormant", "dormant-pros"}


def test_index_survives_a_cycle_between_audiences() -> None:
    a = audience("a", {"type": "audience", "audience": "b"})
    b = audience("b", {"type": "or", "conditions": [{"type": "audience", "audience": "a"},
                                                      {"type": "trait", "trait": "x", "op": "exists"}]})
    index = DependencyIndex.of(catalog_of(a, b))
    assert sorted(index.order) == ["a", "b"]
    assert sorted(index.affected(traits=["x"])) == ["a", "b"]


# --- reading a change -------------------------------------------------------------------


def test_profile_change_reads_live_new_merged_and_home_items() -> None:
    new = profile_change(None, profile_item("p1", version=1))
    assert new is not None and new.live and new.new_profile and new.version == 1
    update = profile_change(profile_item("p1", version=1), profile_item("p1", version=2))
    assert update is not None and update.live and not update.new_profile and update.version == 2
    merged = profile_change(profile_item("p1", version=2),
                            profile_item("p1", version=3, status="merged", merged_into="p2"))
    assert merged is not None and not merged.live and merged.profile_id == "p1"
    home = profile_change(home_item("a1", "a.YTE", version=4), merged_home_item("a1", "p2"))
    assert home is not None and not home.live and home.profile_id == "a.YTE" and home.version == 5
    assert profile_change(None, merged_home_item("a1", "p2")) is None
    assert profile_change(None, {"pk": {"S": "acct#g1"}, "version": {"N": "1"}}) is None


def test_changed_inputs_lists_changed_traits_and_aggregate_states() -> None:
    old = profile_item("p1", traits={"plan": "free", "name": "Ana"})
    new = profile_item("p1", traits={"plan": "pro", "name": "Ana", "vip": True},
                       agg=agg_of(CATALOG, [track("Order Completed", total=5)]))
    traits, specs = changed_inputs(old, new)
    assert traits == {"plan", "vip"}
    assert LTV.aggregate.aggregate_id() in specs
    assert changed_inputs(new, new) == (set(), set())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3, allow_nan=False) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=8)


@given(a=JSON_VALUES, b=JSON_VALUES)
def test_values_are_the_same_exactly_when_their_canonical_json_is(a: Any, b: Any) -> None:
    # The fast comparison of changed_inputs must agree with canonical JSON: 1, 1.0 and
    # true differ, key order does not matter.
    assert _same(a, b) == (_canonical(a) == _canonical(b))
    assert _same(a, json.loads(json.dumps(a)))
    assert not _same(1, True) and not _same(1, 1.0) and _same({"a": 1, "b": [2]}, {"b": [2], "a": 1})


# --- decisions ---------------------------------------------------------------------------


def test_a_new_profile_is_evaluated_against_every_audience() -> None:
    change = profile_change(None, profile_item("p1", traits={"plan": "pro"}))
    assert change is not None
    decisions = by_id(decide(change, CATALOG, INDEX, NOW, {}))
    # "has not signed in for 7 days" holds for a profile never seen signing in.
    assert {a for a, d in decisions.items() if d.transition == "entered"} == {"pro", "dormant"}
    assert decisions["pro"].profile_version == 1 and decisions["pro"].at == "2026-11-28T12:00:00.000Z"


def test_entering_the_audience_on_the_change_that_qualifies() -> None:
    old = profile_item("p1", version=1, traits={"plan": "free"})
    new = profile_item("p1", version=2, traits={"plan": "pro"})
    change = profile_change(old, new)
    assert change is not None
    decisions = by_id(decide(change, CATALOG, INDEX, NOW, {"dormant": member("dormant")}))
    assert decisions["pro"].transition == "entered" and decisions["pro"].member
    assert "pro-buyers" not in decisions  # evaluated, still out: nothing to store


def test_exit_on_trait_change_and_nested_audiences_follow_in_one_pass() -> None:
    agg = agg_of(CATALOG, [track("Order Completed", total=5)])
    old = profile_item("p1", version=3, traits={"plan": "pro"}, agg=agg)
    new = profile_item("p1", version=4, traits={"plan": "free"}, agg=agg)
    stored = {a: member(a) for a in ("pro", "buyers", "pro-buyers")}
    change = profile_change(old, new)
    assert change is not None
    decisions = by_id(decide(change, CATALOG, INDEX, NOW, stored))
    assert decisions["pro"].transition == "exited"
    assert decisions["pro-buyers"].transition == "exited"
    assert "buyers" not in decisions


def test_nested_audience_is_entered_when_its_parts_are_entered_in_the_same_change() -> None:
    old = profile_item("p1", version=1, traits={"plan": "free"})
    new = profile_item("p1", version=2, traits={"plan": "pro", "vip": True},
                       agg=agg_of(CATALOG, [track("Order Completed", total=500)]))
    change = profile_change(old, new)
    assert change is not None
    decisions = by_id(decide(change, CATALOG, INDEX, NOW, {}))
    assert {a for a, d in decisions.items() if d.transition == "entered"} >= {"pro", "buyers", "pro-buyers",
                                                                               "vip", "big"}


def test_merged_away_profile_exits_all_its_audiences() -> None:
    change = profile_change(profile_item("p1", version=2),
                            profile_item("p1", version=3, status="merged", merged_into="p2"))
    assert change is not None
    stored = {"pro": member("pro"), "buyers": Membership("buyers", False, 1, 1, next_check="2026-12-01T00"),
              "big": Membership("big", False, 1, 1)}
    decisions = by_id(decide(change, CATALOG, INDEX, NOW, stored))
    assert decisions["pro"].transition == "exited" and not decisions["pro"].member
    assert decisions["buyers"].transition is None and decisions["buyers"].next_check is None
    assert "big" not in decisions


def test_an_older_image_never_overrides_a_newer_decision() -> None:
    change = profile_change(profile_item("p1", version=1, traits={"plan": "free"}),
                            profile_item("p1", version=2, traits={"plan": "pro"}))
    assert change is not None
    stored = {"pro": Membership("pro", False, 5, 5, exited_at="2026-11-28T11:00:00.000Z")}
    assert "pro" not in by_id(decide(change, CATALOG, INDEX, NOW, stored))


def test_a_redelivered_image_replays_the_stored_transition() -> None:
    change = profile_change(profile_item("p1", version=1, traits={"plan": "free"}),
                            profile_item("p1", version=2, traits={"plan": "pro"}))
    assert change is not None
    stored = {"pro": Membership("pro", True, 2, 2, entered_at="2026-11-28T11:59:00.000Z")}
    decision = by_id(decide(change, CATALOG, INDEX, NOW, stored))["pro"]
    assert decision.replay and decision.transition == "entered" and decision.at == "2026-11-28T11:59:00.000Z"


def test_account_traits_are_read_only_when_an_affected_audience_needs_them() -> None:
    calls: list[int] = []

    def accounts() -> list[dict[str, Any]]:
        calls.append(1)
        return [{"tier": "enterprise"}]

    change = profile_change(None, profile_item("p1"))
    assert change is not None
    assert by_id(decide(change, CATALOG, INDEX, NOW, {}, accounts))["enterprise"].transition == "entered"
    assert calls == [1]
    no_accounts = catalog_of(PRO)
    decide(change, no_accounts, DependencyIndex.of(no_accounts), NOW, {}, accounts)
    assert calls == [1]


def test_a_change_evaluates_the_audiences_its_inputs_touch_and_those_due_not_every_time_based_one() -> None:
    old = profile_item("p1", version=1, traits={"plan": "free"})
    new = profile_item("p1", version=2, traits={"plan": "pro"})
    change = profile_change(old, new)
    assert change is not None
    # dormant (a 7-day window) is not read by the change: left alone until its check is due.
    later = {"dormant": Membership("dormant", False, 1, 1, next_check="2026-11-29T00")}
    assert set(by_id(decide(change, CATALOG, INDEX, NOW, later))) == {"pro"}
    due = {"dormant": Membership("dormant", False, 1, 1, next_check="2026-11-28T11")}
    decided = by_id(decide(change, CATALOG, INDEX, NOW, due))
    assert decided["dormant"].transition == "entered"  # never signed in: in, since the window moved


def test_joining_an_account_evaluates_the_account_based_audiences() -> None:
    from cdp.identity.profile_state import ProfileState, state_to_json

    old = profile_item("p1", version=1)
    new = profile_item("p1", version=2)
    new["state"] = {"S": state_to_json(ProfileState(accounts=frozenset({"g1"})))}
    change = profile_change(old, new)
    assert change is not None
    decided = by_id(decide(change, CATALOG, INDEX, NOW, {}, lambda: [{"tier": "enterprise"}]))
    assert decided["enterprise"].transition == "entered"
    same = profile_change(new, dict(new, version={"N": "3"}))
    assert same is not None
    assert "enterprise" not in by_id(decide(same, CATALOG, INDEX, NOW, {}, lambda: [{"tier": "enterprise"}]))


def test_only_evaluates_the_named_audiences_and_those_naming_them() -> None:
    item = profile_item("p1", version=4, traits={"plan": "pro"})
    change = profile_change(item, item)
    assert change is not None
    assert set(by_id(decide(change, CATALOG, INDEX, NOW, {}, only=["pro"]))) == {"pro"}
    assert by_id(decide(change, CATALOG, INDEX, NOW, {})) == {}


def test_a_touch_names_what_to_re_evaluate() -> None:
    import json

    item = profile_item("p1", version=4, traits={"plan": "pro"})
    touched = dict(item, version={"N": "5"}, check={"S": json.dumps({"audiences": ["pro", "gone"], "at": "t1"})})
    change = profile_change(item, touched)
    assert change is not None
    assert set(by_id(decide(change, CATALOG, INDEX, NOW, {}))) == {"pro"}
    by_account = dict(item, version={"N": "5"}, check={"S": json.dumps({"accounts": "g1", "at": "t2"})})
    change = profile_change(item, by_account)
    assert change is not None
    assert set(by_id(decide(change, CATALOG, INDEX, NOW, {}, lambda: [{"tier": "enterprise"}]))) == {"enterprise"}


def test_a_redrive_touch_decides_every_audience_from_all_stored_memberships() -> None:
    item = profile_item("p1", version=4, traits={"plan": "pro"})
    touched = dict(item, version={"N": "5"}, check={"S": json.dumps({"redrive": True, "at": "t1"})})
    change = profile_change(item, touched)
    assert change is not None
    assert memberships_needed(change, CATALOG, INDEX) is None  # read them all
    decided = by_id(decide(change, CATALOG, INDEX, NOW, {}, lambda: []))
    # Nothing changed in the item, yet every audience is decided: pro enters (it was missed).
    assert decided["pro"].transition == "entered" and "dormant" in decided
    again = dict(touched, version={"N": "6"})  # the same check again: not a new touch
    later = profile_change(touched, again)
    assert later is not None and memberships_needed(later, CATALOG, INDEX) == set()


# --- time ------------------------------------------------------------------------------------


def test_next_change_is_the_midnight_a_sign_in_leaves_the_window() -> None:
    catalog = catalog_of(DORMANT)
    item = profile_item("p1", agg=agg_of(catalog, [track("Signed In", at="2026-11-26T09:00:00.000Z")]))
    # Signed in on the 26th: not dormant until the 26th leaves the 7-day window (Dec 3 00:00).
    assert next_change(DORMANT, item, catalog, NOW, False) == datetime(2026, 12, 3, tzinfo=UTC)
    change = profile_change(None, item)
    assert change is not None
    decision = by_id(decide(change, catalog, DependencyIndex.of(catalog), NOW, {}))["dormant"]
    assert decision.transition is None and decision.next_check == "2026-12-03T00"


def test_next_change_of_a_within_last_days_trait() -> None:
    recent = audience("recent", {"type": "trait", "trait": "signed_up", "op": "within_last_days", "days": 3})
    catalog = catalog_of(recent)
    item = profile_item("p1", traits={"signed_up": "2026-11-27T08:00:00Z"})
    facts = facts_from_item(item, catalog, NOW)
    assert datetime(2026, 11, 30, tzinfo=UTC) in change_candidates(recent, facts, catalog, NOW)
    assert next_change(recent, item, catalog, NOW, True) == datetime(2026, 11, 30, tzinfo=UTC)


def test_no_next_check_for_audiences_that_time_cannot_change() -> None:
    change = profile_change(None, profile_item("p1", traits={"plan": "pro"}))
    assert change is not None
    assert by_id(decide(change, CATALOG, INDEX, NOW, {}))["pro"].next_check is None


# --- events ----------------------------------------------------------------------------------


def test_audience_events_carry_a_deterministic_message_id_and_segments_properties() -> None:
    event = audience_event(audience_id="pro", audience_name="Pro", profile_id="p1", person={"userId": "u1"},
                           transition="entered", version=2, at="2026-11-28T12:00:00.000Z")
    assert event["event"] == "Audience Entered" and event["userId"] == "u1"
    assert event["properties"] == {"audience_id": "pro", "audience_name": "Pro", "audience_key": "pro",
                                   "pro": True}
    assert event["messageId"] == audience_message_id("pro", "p1", "entered", 2)
    assert audience_message_id("pro", "p1", "exited", 2) != event["messageId"]


@pytest.mark.parametrize(("ids", "expected"), [
    (["ident#anonymous_id:a1", "ident#user_id:u1", "ident#email:x@y"], {"userId": "u1"}),
    (["ident#anonymous_id:b", "ident#anonymous_id:a"], {"anonymousId": "a"}),
    (["ident#email:x@y"], None),
])
def test_person_of_prefers_the_user_id(ids: list[str], expected: dict[str, str] | None) -> None:
    assert person_of(ids) == expected


def test_an_audience_schedule_moves_its_checks_to_its_own_ticks() -> None:
    from cdp.segmentation.membership import on_schedule

    at = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert on_schedule(at, 6) == datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
    assert on_schedule(datetime(2026, 11, 29, 0, 0, tzinfo=UTC), 6) == datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    assert on_schedule(at, 1) == at
    renewal = {"type": "trait", "trait": "renewal_at", "op": "within_last_days", "days": 1}
    item = profile_item("p1", version=1, traits={"renewal_at": "2026-11-29T03:00:00Z"})
    change = profile_change(None, item)
    assert change is not None
    for hours, expected in ((None, "2026-11-29T03"), (6, "2026-11-29T06")):
        definition = audience("renewing", renewal).model_copy(update={"schedule_hours": hours})
        catalog = catalog_of(definition)
        (decision,) = decide(change, catalog, DependencyIndex.of(catalog), NOW, {})
        assert decision.next_check == expected  # the renewal enters the range at 03:00
