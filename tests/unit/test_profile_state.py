"""Profile state folds events in any order (and merges in any order) to the same result."""

from __future__ import annotations

from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.identity.profile_state import (
    ProfileState,
    fold_account_event,
    fold_event,
    last_context_of,
    merge_states,
    state_from_json,
    state_to_json,
)


def identify(n: int, at: str, consent: dict | None = None, **traits) -> dict:
    context: dict = {"locale": f"l{n}", "ip": "203.0.113.9"}
    if consent is not None:
        context["consent"] = {"categoryPreferences": consent}
    return {"type": "identify", "messageId": f"m{n}", "timestamp": at, "traits": traits, "context": context}


def test_latest_event_timestamp_wins_not_arrival_order():
    early = identify(1, "2026-01-01T00:00:00.000Z", plan="free", name="Ana")
    late = identify(2, "2026-02-01T00:00:00.000Z", plan="pro")
    state = fold_event(fold_event(ProfileState(), late), early)  # late arrives first
    assert state.traits["plan"].value == "pro" and state.traits["name"].value == "Ana"
    assert (state.first_seen, state.last_seen_day) == ("2026-01-01T00:00:00.000Z", "2026-02-01")
    assert fold_event(state, late) == state  # idempotent: a replay changes nothing


def test_track_context_traits_count_but_group_traits_are_the_accounts():
    track = {"type": "track", "messageId": "t", "timestamp": "2026-01-01T00:00:00.000Z", "event": "E",
             "context": {"traits": {"email": "a@example.com"}}}
    group = {"type": "group", "messageId": "g", "timestamp": "2026-01-02T00:00:00.000Z", "groupId": "acme",
             "traits": {"plan": "enterprise"}}
    state = fold_event(fold_event(ProfileState(), track), group)
    assert set(state.traits) == {"email"}


events = st.lists(
    st.builds(
        lambda n, day, plan, city, consent: identify(n, f"2026-01-{day:02d}T00:00:00.000Z", consent, plan=plan,
                                                     city=city),
        st.integers(0, 50), st.integers(1, 28), st.sampled_from(["free", "pro", None]), st.sampled_from(["a", "b"]),
        st.sampled_from([None, {"Advertising": True}, {"Advertising": False, "Analytics": True}]),
    ),
    min_size=1, max_size=12, unique_by=lambda e: e["messageId"],
)


@settings(max_examples=200, deadline=None)
@given(events=events, data=st.data())
def test_any_order_and_any_merge_split_give_the_same_state(events, data):
    in_order = reduce(fold_event, events, ProfileState())
    shuffled = data.draw(st.permutations(events))
    assert reduce(fold_event, shuffled, ProfileState()) == in_order
    # Split between two profiles that are merged later: same state as one profile.
    cut = data.draw(st.integers(0, len(shuffled)))
    left = reduce(fold_event, shuffled[:cut], ProfileState())
    right = reduce(fold_event, shuffled[cut:], ProfileState())
    assert merge_states(left, right) == in_order == merge_states(right, left)


def test_consent_is_the_latest_preferences_an_event_carried():
    opted_in = identify(1, "2026-01-01T00:00:00.000Z", {"Advertising": True})
    opted_out = identify(2, "2026-01-02T00:00:00.000Z", {"Advertising": False})
    silent = identify(3, "2026-01-03T00:00:00.000Z", plan="pro")  # carries no consent: changes none
    state = reduce(fold_event, [silent, opted_out, opted_in], ProfileState())
    assert state.consent is not None and state.consent.value == {"Advertising": False}
    assert state_from_json(state_to_json(state)) == state


def test_state_round_trips_through_its_stored_json():
    state = reduce(fold_event, [identify(1, "2026-01-01T00:00:00.000Z", plan="pro", seats=3, tags=["a"]),
                                identify(2, "2026-01-02T00:00:00.000Z", city="Lisboa")], ProfileState())
    assert state_from_json(state_to_json(state)) == state
    assert state_from_json(None) == ProfileState()


def test_last_context_keeps_the_ip_only_when_allowed():
    event = identify(1, "2026-01-01T00:00:00.000Z")
    assert last_context_of(event) == {"locale": "l1"}
    assert last_context_of(event, keep_ip=True) == {"locale": "l1", "ip": "203.0.113.9"}


def test_a_later_event_of_the_same_day_without_traits_changes_nothing():
    state = fold_event(ProfileState(), identify(1, "2026-01-01T08:00:00.000Z", plan="pro"))
    page = {"type": "page", "messageId": "p", "timestamp": "2026-01-01T21:00:00.000Z", "context": {}}
    assert fold_event(state, page) == state  # no profile write for it


def test_account_state_takes_group_traits_latest_wins():
    g1 = {"type": "group", "messageId": "g1", "timestamp": "2026-01-02T00:00:00.000Z", "groupId": "acme",
          "traits": {"plan": "enterprise", "name": "Acme"}}
    g2 = {"type": "group", "messageId": "g2", "timestamp": "2026-01-01T00:00:00.000Z", "groupId": "acme",
          "traits": {"plan": "trial"}}
    state = fold_account_event(fold_account_event(ProfileState(), g1), g2)
    assert {k: v.value for k, v in state.traits.items()} == {"plan": "enterprise", "name": "Acme"}
