"""Account activity: the ``account_activity`` condition (validation, summary, evaluation at
the window's edges), the per-account day buckets (union, cap, live_from cut, pruning), the
account changes that re-evaluate members, and the instants a member's result may flip."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cdp.segmentation import account_activity
from cdp.segmentation.account_activity import (
    MEMBERS_CAP,
    STATE_CAP,
    activity_to_json,
    bucket_cap,
    buckets_of,
    history_additions,
    member_tag,
    merge_additions,
    stream_additions,
    unite,
    unite_activity,
)
from cdp.segmentation.catalog import catalog_from_items
from cdp.segmentation.definitions import AccountActivityCondition, AccountActivitySpec, problems
from cdp.segmentation.evaluate import AccountFacts, Facts, dependencies, evaluate
from cdp.segmentation.membership import DependencyIndex, account_change, change_candidates, next_change_of
from tests.segmentation_items import audience, catalog_of, track

WEEKLY = {"type": "account_activity", "event": "Feature Used", "window": {"days": 7},
          "members": {"op": "at_least", "n": 3}}
HIGH_INTENT = audience("high-intent", WEEKLY)
CONDITION = HIGH_INTENT.condition
assert isinstance(CONDITION, AccountActivityCondition)
SPEC = CONDITION.activity()
SPEC_ID = SPEC.activity_id()


@dataclass(frozen=True)
class Live:
    spec: AccountActivitySpec
    live_from: str


def account(buckets: dict[str, list[str]], spec_id: str = SPEC_ID, **traits: Any) -> AccountFacts:
    return AccountFacts("g1", traits, {spec_id: buckets})


def holds(condition: dict[str, Any], accounts: list[Any], now: datetime) -> bool:
    definition = audience("a", condition)
    return evaluate(definition.condition, Facts(accounts=accounts), now)


# --- the condition -----------------------------------------------------------------------


def test_invalid_account_activity_conditions_are_refused_with_the_field_and_the_reason() -> None:
    bad = {**WEEKLY, "members": {"op": "more_than", "n": -1}, "window": {"days": 0}, "count": {"n": 3}}
    with pytest.raises(ValidationError) as caught:
        audience("a", bad)
    found = {p["field"]: p["reason"] for p in problems(caught.value)}
    assert found == {
        "condition.account_activity.members.op": "Input should be 'at_least', 'at_most' or 'exactly'",
        "condition.account_activity.members.n": "Input should be greater than or equal to 0",
        "condition.account_activity.window.days.days": "Input should be greater than or equal to 1",
        "condition.account_activity.count": "Extra inputs are not permitted",
    }
    with pytest.raises(ValidationError) as caught:
        audience("a", {"type": "account_activity", "event_type": "click", "where": [{"property": "x", "op": "gt",
                                                                                      "value": "y"}]})
    fields = {p["field"] for p in problems(caught.value)}
    assert fields == {"condition.account_activity.event_type", "condition.account_activity.where.0"}


@pytest.mark.parametrize(("condition", "summary"), [
    (WEEKLY, 'an account has at least 3 members who performed "Feature Used" in the last 7 days'),
    ({"type": "account_activity", "event_type": "page", "event": "Pricing", "members": {"op": "exactly", "n": 1}},
     'an account has exactly 1 member who viewed page "Pricing"'),
    ({"type": "account_activity", "members": {"op": "exactly", "n": 0}, "window": {"days": 30}},
     "an account has no members who performed any track event in the last 30 days"),
    ({"type": "account_activity", "event": "Signed In", "where": [{"property": "sso", "op": "equals", "value": True}],
      "members": {"op": "at_most", "n": 2}},
     'an account has at most 2 members who performed "Signed In" where sso = true'),
    ({"type": "account_activity"}, "an account has at least 1 member who performed any track event"),
])
def test_account_activity_conditions_summarise_in_words(condition: dict[str, Any], summary: str) -> None:
    assert audience("a", condition).summary() == summary


def test_the_members_active_on_a_day_count_for_seven_days_exactly() -> None:
    acct = account({"2026-11-22": ["p1", "p2"], "2026-11-24": ["p2", "p3"]})
    assert not holds(WEEKLY, [acct], datetime(2026, 11, 23, 12, tzinfo=UTC))  # p3 not yet
    assert holds(WEEKLY, [acct], datetime(2026, 11, 24, 0, tzinfo=UTC))
    assert holds(WEEKLY, [acct], datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC))
    assert not holds(WEEKLY, [acct], datetime(2026, 11, 29, tzinfo=UTC))  # 2026-11-22 left: p2, p3 remain


def test_the_members_are_counted_once_whatever_days_they_were_active() -> None:
    acct = account({"2026-11-26": ["p1", "p2"], "2026-11-27": ["p1", "p2"], "2026-11-28": ["p2"]})
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert not holds(WEEKLY, [acct], now)
    exactly_two = {**WEEKLY, "members": {"op": "exactly", "n": 2}}
    assert holds(exactly_two, [acct], now)
    assert holds({**WEEKLY, "members": {"op": "at_most", "n": 2}}, [acct], now)


def test_any_account_of_the_profile_may_qualify_it() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    quiet = account({"2026-11-28": ["p1"]})
    busy = AccountFacts("g2", {}, {SPEC_ID: {"2026-11-27": ["p4", "p5", "p6"]}})
    assert holds(WEEKLY, [quiet, busy], now)
    assert not holds(WEEKLY, [quiet], now)


def test_an_account_without_activity_has_no_active_members_and_a_profile_without_accounts_never_matches() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    none = {**WEEKLY, "members": {"op": "exactly", "n": 0}}
    assert holds(none, [AccountFacts("g1", {"plan": "pro"})], now)
    assert holds(none, [{"plan": "pro"}], now)  # traits alone (no activity): 0 members
    assert holds(none, [account({"2026-11-28": ["p1"]}, spec_id="act_other")], now)  # another spec's activity
    assert not holds(WEEKLY, [AccountFacts("g1")], now)
    assert not holds(none, [], now)


def test_all_time_activity_reads_every_bucket() -> None:
    ever = {"type": "account_activity", "event": "Feature Used", "members": {"op": "at_least", "n": 2}}
    spec_id = audience("a", ever).condition.activity().activity_id()  # type: ignore[union-attr]
    assert holds(ever, [account({"*": ["p1", "p2"]}, spec_id=spec_id)], datetime(2030, 1, 1, tzinfo=UTC))


def test_account_facts_still_answer_account_trait_conditions() -> None:
    acct = account({}, plan="enterprise")
    condition = {"type": "account", "trait": "plan", "op": "equals", "value": "enterprise"}
    assert holds(condition, [acct], datetime(2026, 11, 28, tzinfo=UTC))
    assert dict(acct) == {"plan": "enterprise"}


def test_dependencies_list_the_activity_spec_and_make_it_time_based_and_account_based() -> None:
    found = dependencies(HIGH_INTENT)
    assert found.activity == {SPEC_ID: SPEC}
    assert found.time_based and not found.aggregates
    index = DependencyIndex.of(catalog_of(HIGH_INTENT))
    assert index.account_based == {"high-intent"} and index.time_based == {"high-intent"}
    assert index.activity == {SPEC_ID: SPEC}
    assert SPEC_ID.startswith("act_")
    assert AccountActivitySpec.model_validate_json(SPEC.model_dump_json()).activity_id() == SPEC_ID


def test_the_catalog_lists_registered_activity_specs_apart_from_profile_aggregates() -> None:
    items = [{"pk": {"S": "audience#high-intent"}, "definition": {"S": HIGH_INTENT.model_dump_json(by_alias=True)},
              "version": {"N": "1"}},
             {"pk": {"S": f"actspec#{SPEC_ID}"}, "spec": {"S": SPEC.model_dump_json(exclude_none=True)},
              "gen": {"S": "g1"}, "live_from": {"S": "2026-11-01T00:00:00.000Z"}},
             {"pk": {"S": "actspec#act_unread"}, "spec": {"S": SPEC.model_dump_json()},
              "gen": {"S": "g1"}, "live_from": {"S": "2026-11-01T00:00:00.000Z"}}]
    catalog = catalog_from_items(items)
    assert set(catalog.activity_specs) == {SPEC_ID} and catalog.specs == {}
    assert catalog.activity_specs[SPEC_ID].live_from == "2026-11-01T00:00:00.000Z"


def test_activity_specs_are_pending_a_backfill_until_marked_done() -> None:
    definition = {"pk": {"S": "audience#high-intent"}, "version": {"N": "1"},
                  "definition": {"S": HIGH_INTENT.model_dump_json(by_alias=True)}}
    spec = {"pk": {"S": f"actspec#{SPEC_ID}"}, "spec": {"S": SPEC.model_dump_json(exclude_none=True)},
            "gen": {"S": "g1"}, "live_from": {"S": "2026-11-01T00:00:00.000Z"}}
    assert catalog_from_items([definition, spec]).activity_specs[SPEC_ID].backfill == "pending"
    done = dict(spec, backfill={"S": "done"})
    assert catalog_from_items([definition, done]).activity_specs[SPEC_ID].backfill == "done"


# --- the buckets -------------------------------------------------------------------------

LIVE = {SPEC_ID: Live(SPEC, "2026-11-25T00:00:00.000Z")}


def test_selected_events_add_the_profile_to_the_day_bucket_of_each_of_its_accounts() -> None:
    events = [track("Feature Used", "2026-11-26T10:00:00.000Z"), track("Feature Used", "2026-11-27T23:59:00.000Z"),
              track("Signed In", "2026-11-27T10:00:00.000Z")]
    found = stream_additions("p1", {"g1", "g2"}, LIVE, events)
    p1 = member_tag("p1")
    assert found == {g: {SPEC_ID: {"2026-11-26": {p1}, "2026-11-27": {p1}}} for g in ("g1", "g2")}
    assert stream_additions("p1", set(), LIVE, events) == {}  # no account: nothing to add
    assert stream_additions("p1", {"g1"}, LIVE, [events[2]]) == {}


def test_the_consumer_and_the_backfill_split_the_events_at_live_from() -> None:
    before = dict(track("Feature Used", "2026-11-24T10:00:00.000Z"), receivedAt="2026-11-24T23:59:59.999Z")
    after = dict(track("Feature Used", "2026-11-24T10:00:00.000Z", n=2), receivedAt="2026-11-25T00:00:00.000Z")
    assert stream_additions("p1", {"g1"}, LIVE, [before]) == {}
    assert history_additions("p1", {"g1"}, LIVE, [after]) == {}
    p1 = member_tag("p1")
    assert stream_additions("p1", {"g1"}, LIVE, [after]) == {"g1": {SPEC_ID: {"2026-11-24": {p1}}}}
    assert history_additions("p1", {"g1"}, LIVE, [before]) == {"g1": {SPEC_ID: {"2026-11-24": {p1}}}}
    assert account_activity.selected_by_any(LIVE, after) and not account_activity.selected_by_any(LIVE, before)
    # The backfill's pre-check (which history partitions to look up a holder for) is the complement.
    assert account_activity.selected_before_live(LIVE, before) and not account_activity.selected_before_live(
        LIVE, after)
    assert not account_activity.selected_before_live(LIVE, dict(before, event="Signed In"))


def test_a_between_dates_spec_keeps_one_bucket_of_the_events_within_its_dates() -> None:
    spec = AccountActivitySpec(event="Feature Used", window={"from": "2026-11-01", "to": "2026-11-30"})
    live = {spec.activity_id(): Live(spec, "2026-01-01T00:00:00.000Z")}
    events = [track("Feature Used", "2026-11-10T10:00:00.000Z"), track("Feature Used", "2026-12-01T10:00:00.000Z")]
    assert stream_additions("p1", {"g1"}, live, events) == {"g1": {spec.activity_id(): {"*": {member_tag("p1")}}}}


def test_a_bucket_keeps_the_smallest_ids_up_to_the_cap() -> None:
    ids = [f"p{n:05d}" for n in range(MEMBERS_CAP + 500)]
    assert unite(ids[:800], ids[600:]) == ids[:MEMBERS_CAP]
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    stored = unite_activity({}, {SPEC_ID: {"2026-11-28": ids}}, {SPEC_ID: SPEC}, now)
    assert len(stored[SPEC_ID]["b"]["2026-11-28"]) == MEMBERS_CAP
    many = {**WEEKLY, "members": {"op": "at_least", "n": MEMBERS_CAP + 1}}
    assert not holds(many, [AccountFacts("g1", {}, buckets_of(stored))], now)  # the cap is the most one day reads
    again = unite_activity(stored, {SPEC_ID: {"2026-11-27": ids[:10]}}, {SPEC_ID: SPEC}, now)
    exactly_cap = {**WEEKLY, "members": {"op": "exactly", "n": MEMBERS_CAP}}
    assert holds(exactly_cap, [AccountFacts("g1", {}, buckets_of(again))], now)


def test_long_windows_keep_fewer_members_a_day_so_a_state_stays_bounded() -> None:
    assert bucket_cap(SPEC.window) == MEMBERS_CAP
    assert bucket_cap(None) == MEMBERS_CAP
    monthly = AccountActivitySpec(event="Feature Used", window={"days": 30})
    assert bucket_cap(monthly.window) == STATE_CAP // 30 == 233
    ids = [f"p{n:05d}" for n in range(MEMBERS_CAP)]
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    stored = unite_activity({}, {monthly.activity_id(): {f"2026-11-{d:02d}": ids for d in range(1, 29)}},
                            {monthly.activity_id(): monthly}, now)
    assert sum(len(b) for b in stored[monthly.activity_id()]["b"].values()) <= STATE_CAP


def test_members_are_stored_as_short_stable_tags() -> None:
    long_home_id = "a." + "x" * 170
    assert len(member_tag(long_home_id)) == 12 and member_tag(long_home_id) == member_tag(long_home_id)
    assert len({member_tag(f"p{n}") for n in range(10_000)}) == 10_000


def test_buckets_before_the_window_are_dropped_and_other_specs_are_pruned_by_their_stored_days() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    stored = {SPEC_ID: {"d": 7, "b": {"2026-11-21": ["p9"], "2026-11-22": ["p1"]}},
              "act_unknown": {"d": 2, "b": {"2026-11-26": ["p2"], "2026-11-27": ["p3"]}},
              "act_gone": {"d": 1, "b": {"2026-11-20": ["p4"]}},
              "act_all_time": {"b": {"*": ["p5"]}}}
    after = unite_activity(stored, {SPEC_ID: {"2026-11-28": {"p1"}}}, {SPEC_ID: SPEC}, now)
    assert after == {SPEC_ID: {"d": 7, "b": {"2026-11-22": ["p1"], "2026-11-28": ["p1"]}},
                     "act_unknown": {"d": 2, "b": {"2026-11-27": ["p3"]}},
                     "act_all_time": {"b": {"*": ["p5"]}}}


additions = st.lists(st.tuples(st.sampled_from(["2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29"]),
                               st.sampled_from(["p1", "p2", "p3", "p4"])), max_size=12)


@given(additions, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=4))
def test_uniting_activity_is_order_insensitive_and_idempotent(adds: list[tuple[str, str]], rnd: Any,
                                                              parts: int) -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    specs = {SPEC_ID: SPEC}
    everything = unite_activity({}, {SPEC_ID: _buckets(adds)}, specs, now) if adds else {}
    shuffled = list(adds) + rnd.sample(adds, len(adds) // 2)  # duplicates: a redelivery
    rnd.shuffle(shuffled)
    stored: dict[str, Any] = {}
    for n in range(parts):  # any split into batches, in any order
        chunk = shuffled[n::parts]
        if chunk:
            stored = unite_activity(stored, {SPEC_ID: _buckets(chunk)}, specs, now)
    assert activity_to_json(stored) == activity_to_json(everything)
    if adds:
        assert unite_activity(stored, {SPEC_ID: _buckets(adds)}, specs, now) == stored  # again: no change


def _buckets(adds: list[tuple[str, str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for day, profile_id in adds:
        found.setdefault(day, set()).add(profile_id)
    return found


def test_a_batch_adds_each_accounts_members_together() -> None:
    found: account_activity.Additions = {}
    merge_additions(found, {"g1": {SPEC_ID: {"2026-11-28": {"p1"}}}})
    merge_additions(found, {"g1": {SPEC_ID: {"2026-11-28": {"p2"}}}, "g2": {SPEC_ID: {"2026-11-27": {"p2"}}}})
    assert found == {"g1": {SPEC_ID: {"2026-11-28": {"p1", "p2"}}}, "g2": {SPEC_ID: {"2026-11-27": {"p2"}}}}


# --- account changes and time ------------------------------------------------------------


def account_image(buckets: dict[str, list[str]] | None, version: int = 1, state: str | None = None) -> dict[str, Any]:
    image = {"pk": {"S": "acct#g1"}, "group_id": {"S": "g1"}, "version": {"N": str(version)},
             "state": {"S": state or "{}"}}
    if buckets is not None:
        image["act"] = {"S": json.dumps({SPEC_ID: {"d": 7, "b": buckets}})}
    return image


def test_members_are_re_evaluated_only_when_a_count_an_audience_reads_changes() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    read = DependencyIndex.of(catalog_of(HIGH_INTENT)).activity
    two = account_image({"2026-11-28": ["p1", "p2"]})
    assert account_change(account_image(None), two, read, now) == "g1"  # 0 -> 2 members
    assert account_change(two, account_image({"2026-11-28": ["p1", "p2", "p3"]}), read, now) == "g1"
    # p1 active again, another day of the week: still 2 members, nobody is touched.
    assert account_change(two, account_image({"2026-11-27": ["p1"], "2026-11-28": ["p1", "p2"]}), read, now) is None
    assert account_change(two, two, read, now) is None
    # No audience reads the account's activity: nothing to do either.
    assert account_change(account_image(None), two, {}, now) is None
    # A bucket dated ahead of now (a client clock) changes a count at its midnight.
    ahead = account_image({"2026-11-28": ["p1", "p2"], "2026-11-29": ["p3"]})
    assert account_change(two, ahead, read, now) == "g1"


def test_a_members_next_check_is_when_its_accounts_activity_leaves_the_window() -> None:
    catalog = catalog_of(HIGH_INTENT)
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    facts = Facts(accounts=[account({"2026-11-22": ["p1"], "2026-11-25": ["p2", "p3"]})])
    candidates = change_candidates(HIGH_INTENT, facts, catalog, now)
    assert candidates == [datetime(2026, 11, 29, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)]
    assert evaluate(HIGH_INTENT.condition, facts, now)
    assert next_change_of(HIGH_INTENT, facts, catalog, now, True) == datetime(2026, 11, 29, tzinfo=UTC)
    later = Facts(accounts=[account({"2026-11-25": ["p1", "p2", "p3"]})])
    assert next_change_of(HIGH_INTENT, later, catalog, now, True) == datetime(2026, 12, 2, tzinfo=UTC)



ALWAYS = {SPEC_ID: Live(SPEC, "2000-01-01T00:00:00.000Z")}
member_events = st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3"]),
                                   st.sampled_from(["2026-11-21", "2026-11-23", "2026-11-27", "2026-11-28"]),
                                   st.sampled_from(["Feature Used", "Signed In"])), max_size=10)


@given(member_events, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=3))
def test_folding_events_in_any_batches_and_order_with_redeliveries_gives_one_activity(
        events: list[tuple[str, str, str]], rnd: Any, batches: int) -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    specs = {SPEC_ID: SPEC}

    def fold(stored: dict[str, Any], chunk: list[tuple[str, str, str]]) -> dict[str, Any]:
        found: account_activity.Additions = {}
        for profile_id, day, name in chunk:
            event = track(name, f"{day}T10:00:00.000Z")
            merge_additions(found, stream_additions(profile_id, {"g1"}, ALWAYS, [event]))
        return unite_activity(stored, found["g1"], specs, now) if "g1" in found else stored

    once = fold({}, events)
    delivered = events + rnd.sample(events, len(events) // 2)
    rnd.shuffle(delivered)
    stored: dict[str, Any] = {}
    for n in range(batches):
        stored = fold(stored, delivered[n::batches])
    assert stored == once
    expected = {member_tag(p) for p, day, name in events if name == "Feature Used" and day >= "2026-11-22"}
    assert account_activity.member_count(SPEC, buckets_of(stored), now) == len(expected)
