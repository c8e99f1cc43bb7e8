"""Consent (Segment's semantics) and suppression checks before a delivery."""

from __future__ import annotations

import pytest

from cdp.activation.consent import (
    ConsentDecision,
    ConsentPolicy,
    allowed,
    delivery_decision,
    preferences_of,
    stored_preferences,
    suppressed,
)

POLICIES = list(ConsentPolicy)


def event_with(preferences):
    return {"type": "track", "event": "Viewed", "userId": "u1",
            "context": {"consent": {"categoryPreferences": preferences}}}


# Rule 1: a destination mapped to no category receives everything.

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("preferences", [None, {}, {"Advertising": False}])
def test_destination_mapped_to_no_category_always_receives(policy, preferences):
    decision = allowed([], preferences, policy)
    assert decision == ConsentDecision(True, "destination is mapped to no consent category")


# Rule 2: no preferences at all.

def test_no_preferences_flow_under_connections_semantics():
    decision = allowed(["Advertising"], None, ConsentPolicy.CONNECTIONS)
    assert decision.allowed
    assert "not enforced" in decision.reason


def test_no_preferences_block_mapped_destinations_under_unify_semantics():
    decision = allowed(["Advertising", "Analytics"], None, ConsentPolicy.UNIFY)
    assert not decision.allowed
    assert decision.reason == "no consent preferences: not consented to Advertising, Analytics"


# Rule 3: an empty categoryPreferences object is false for every category.

@pytest.mark.parametrize("policy", POLICIES)
def test_empty_preferences_block_every_mapped_destination(policy):
    decision = allowed(["Advertising"], {}, policy)
    assert not decision.allowed
    assert decision.reason == "not consented (missing: Advertising)"


# Rule 4: every mapped category must be true.

@pytest.mark.parametrize("policy", POLICIES)
def test_all_required_categories_true_allows(policy):
    decision = allowed(["Advertising", "Analytics"], {"Advertising": True, "Analytics": True}, policy)
    assert decision == ConsentDecision(True, "consented to Advertising, Analytics")


def test_one_false_category_of_several_blocks():
    decision = allowed(["Advertising", "Analytics"], {"Advertising": True, "Analytics": False},
                       ConsentPolicy.CONNECTIONS)
    assert not decision.allowed
    assert decision.reason == "not consented (refused: Analytics)"


def test_category_absent_from_preferences_blocks():
    decision = allowed(["Functional"], {"Advertising": True}, ConsentPolicy.CONNECTIONS)
    assert not decision.allowed
    assert decision.reason == "not consented (missing: Functional)"


def test_segment_docs_example_multi_category_destination():
    # "ad = facebook, google-ads; analytics = facebook, amplitude" with {ad: true, analytics: false}.
    preferences = {"ad": True, "analytics": False}
    assert allowed(["ad"], preferences, ConsentPolicy.CONNECTIONS).allowed  # google-ads
    assert not allowed(["ad", "analytics"], preferences, ConsentPolicy.CONNECTIONS).allowed  # facebook
    assert not allowed(["analytics"], preferences, ConsentPolicy.CONNECTIONS).allowed  # amplitude


def test_reason_lists_every_failing_category_by_kind():
    decision = allowed(["A", "B", "C", "D"], {"A": False, "C": "yes", "D": True}, ConsentPolicy.CONNECTIONS)
    assert decision.reason == "not consented (refused: A; missing: B; not a boolean: C)"


# Rule 5: categories the destination does not need are ignored.

def test_extra_categories_are_ignored():
    decision = allowed(["Analytics"], {"Analytics": True, "Advertising": False, "Other": "x"},
                       ConsentPolicy.CONNECTIONS)
    assert decision.allowed
    assert "Advertising" not in decision.reason and "Other" not in decision.reason


# Unspecified by Segment, decided on the safe side.

@pytest.mark.parametrize("value", ["true", "True", 1, 1.0, None, [True], {"v": True}])
def test_non_boolean_values_are_not_consent(value):
    decision = allowed(["Analytics"], {"Analytics": value}, ConsentPolicy.CONNECTIONS)
    assert not decision.allowed
    assert decision.reason == "not consented (not a boolean: Analytics)"  # the value is never echoed


def test_category_ids_match_case_sensitively():
    assert not allowed(["Analytics"], {"analytics": True}, ConsentPolicy.CONNECTIONS).allowed


def test_required_categories_may_be_any_iterable_and_repeat():
    assert allowed(iter(["A", "A"]), {"A": True}, ConsentPolicy.CONNECTIONS).reason == "consented to A"


def test_reason_never_contains_values_or_unrequested_keys():
    preferences = {"Analytics": "ana@example.com", "ana@example.com": True}
    decision = allowed(["Analytics"], preferences, ConsentPolicy.CONNECTIONS)
    assert "ana@example.com" not in decision.reason


# Reading preferences from events.

@pytest.mark.parametrize("event", [
    {"type": "track"},
    {"context": None},
    {"context": {}},
    {"context": {"consent": {}}},
    {"context": {"consent": None}},
    {"context": {"consent": "yes"}},
    {"context": "nope"},
])
def test_events_without_preferences_read_as_none(event):
    assert preferences_of(event) is None


@pytest.mark.parametrize("raw", [{}, [], "all", None, True])
def test_empty_or_malformed_preferences_read_as_empty(raw):
    assert preferences_of(event_with(raw)) == {}


def test_preferences_are_read_from_context_consent():
    assert preferences_of(event_with({"Advertising": True})) == {"Advertising": True}


def test_stored_consent_is_the_latest_event_carrying_one():
    events = [event_with({"Advertising": True}), {"type": "page"},
              event_with({"Advertising": False}), {"type": "track", "context": {}}]
    assert stored_preferences(events) == {"Advertising": False}


def test_latest_empty_preferences_replace_earlier_ones():
    assert stored_preferences([event_with({"Advertising": True}), event_with({})]) == {}


def test_profile_without_any_preferences_has_none_stored():
    assert stored_preferences([{"type": "identify"}, {"type": "track", "context": {"consent": {}}}]) is None
    assert stored_preferences([]) is None


# Suppression.

def test_suppressed_when_any_key_is_in_the_set():
    assert suppressed(["p1", "sha256:abc"], {"sha256:abc"})
    assert not suppressed(["p1", "sha256:abc"], {"p2"})
    assert not suppressed([], {"p1"})


def test_suppression_overrides_consent_and_reason_names_no_id():
    decision = delivery_decision(required=[], preferences=None, policy=ConsentPolicy.CONNECTIONS,
                                 keys=["p1"], suppression_set=frozenset({"p1"}))
    assert decision == ConsentDecision(False, "profile is suppressed")
    assert "p1" not in decision.reason


def test_unsuppressed_profile_falls_through_to_consent():
    decision = delivery_decision(required=["Advertising"], preferences={"Advertising": False},
                                 policy=ConsentPolicy.CONNECTIONS, keys=["p1"], suppression_set=set())
    assert decision == ConsentDecision(False, "not consented (refused: Advertising)")
