"""The evaluator: every operator, window edges, missing traits and type mismatches
(False, never an exception), accounts, audiences, and the dependencies of a definition."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cdp.segmentation.aggregates import empty, fold
from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition, Condition
from cdp.segmentation.evaluate import Facts, dependencies, evaluate

CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MISSING = object()


def check(condition: dict[str, Any], facts: Facts, now: datetime = NOW) -> bool:
    return evaluate(CONDITION.validate_python(condition), facts, now)


def trait_test(op: str, trait_value: Any, **operand: Any) -> bool:
    traits = {} if trait_value is MISSING else {"t": trait_value}
    return check({"type": "trait", "trait": "t", "op": op, **operand}, Facts(traits=traits))


@pytest.mark.parametrize(("op", "operand", "trait_value", "expected"), [
    ("equals", {"value": "pro"}, "pro", True),
    ("equals", {"value": "pro"}, "Pro", False),
    ("equals", {"value": 1}, 1.0, True),
    ("equals", {"value": 1}, True, False),
    ("equals", {"value": True}, 1, False),
    ("equals", {"value": "pro"}, MISSING, False),
    ("equals", {"value": "pro"}, None, False),
    ("not_equals", {"value": "pro"}, "free", True),
    ("not_equals", {"value": "pro"}, "pro", False),
    ("not_equals", {"value": "pro"}, MISSING, False),
    ("contains", {"value": "acme"}, "ana@acme.com", True),
    ("contains", {"value": "acme"}, "ana@x.com", False),
    ("contains", {"value": "vip"}, ["new", "vip"], True),
    ("contains", {"value": 3}, [1, 2], False),
    ("contains", {"value": "1"}, 100, False),
    ("starts_with", {"value": "ana"}, "ana@acme.com", True),
    ("starts_with", {"value": "ana"}, "bob", False),
    ("starts_with", {"value": "1"}, 100, False),
    ("in", {"values": ["pro", "team"]}, "team", True),
    ("in", {"values": ["pro", "team"]}, "free", False),
    ("in", {"values": [1, 2]}, True, False),
    ("exists", {}, "", True),
    ("exists", {}, None, False),
    ("exists", {}, MISSING, False),
    ("not_exists", {}, MISSING, True),
    ("not_exists", {}, None, True),
    ("not_exists", {}, 0, False),
    ("gt", {"value": 30}, 31, True),
    ("gt", {"value": 30}, 30, False),
    ("gte", {"value": 30}, 30, True),
    ("gte", {"value": 30}, 29.99, False),
    ("lt", {"value": 30}, 29.5, True),
    ("lt", {"value": 30}, 30, False),
    ("lte", {"value": 30}, 30, True),
    ("lte", {"value": 30}, 31, False),
    ("gt", {"value": 30}, "31", False),  # a string is never read as a number
    ("gt", {"value": 0}, True, False),  # nor is a boolean
    ("lt", {"value": 30}, MISSING, False),
    ("before", {"value": "2026-01-01"}, "2025-12-31T23:59:59Z", True),
    ("before", {"value": "2026-01-01"}, "2026-01-01T00:00:00Z", False),
    ("before", {"value": "2026-01-01"}, "2025-12-31", True),
    ("after", {"value": "2026-01-01"}, "2026-01-01T23:00:00Z", False),  # same day is not after a date
    ("after", {"value": "2026-01-01"}, "2026-01-02T00:00:00Z", True),
    ("after", {"value": "2026-01-01T10:00:00Z"}, "2026-01-01T10:00:01Z", True),
    ("after", {"value": "2026-01-01T10:00:00Z"}, "2026-01-01T12:00:00+03:00", False),  # 09:00 UTC
    ("before", {"value": "2026-01-01T10:00:00Z"}, "2026-01-01T09:59:59", True),  # no zone: UTC
    ("before", {"value": "2026-01-01"}, "soon", False),
    ("before", {"value": "2026-01-01"}, 20251231, False),
    ("before", {"value": "2026-01-01"}, "9999-12-31T23:59:59-01:00", False),  # past year 9999 in UTC
    ("gt", {"value": 1}, {"a": 2}, False),
    ("equals", {"value": "a"}, ["a"], False),
    ("within_last_days", {"days": 7}, "2026-11-22T00:00:00Z", True),  # first day of the window
    ("within_last_days", {"days": 7}, "2026-11-21T23:59:59Z", False),
    ("within_last_days", {"days": 7}, "2026-11-28T12:00:00Z", True),  # exactly now
    ("within_last_days", {"days": 7}, "2026-11-28T12:00:01Z", False),  # in the future
    ("within_last_days", {"days": 1}, "2026-11-28", True),
    ("within_last_days", {"days": 7}, "last week", False),
    ("within_last_days", {"days": 7}, MISSING, False),
])
def test_trait_operators(op: str, operand: dict[str, Any], trait_value: Any, expected: bool) -> None:
    assert trait_test(op, trait_value, **operand) is expected


def test_not_inverts_a_test_on_a_missing_trait() -> None:
    assert check({"type": "not", "condition": {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"}},
                 Facts())


def test_and_or_nest() -> None:
    facts = Facts(traits={"plan": "pro", "age": 40})
    condition = {"type": "and", "conditions": [
        {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"},
        {"type": "or", "conditions": [
            {"type": "trait", "trait": "age", "op": "lt", "value": 18},
            {"type": "not", "condition": {"type": "trait", "trait": "email", "op": "exists"}},
        ]},
    ]}
    assert check(condition, facts)
    assert not check(condition, Facts(traits={"plan": "pro", "age": 40, "email": "a@b.c"}))


def logins(*timestamps: str) -> Facts:
    condition = CONDITION.validate_python({"type": "event", "event": "Login", "window": {"days": 7}})
    spec = condition.aggregate()
    state = empty(spec)
    for i, at in enumerate(timestamps):
        state = fold(state, {"type": "track", "event": "Login", "timestamp": at, "messageId": str(i)})
    return Facts(aggregates={spec.aggregate_id(): state})


def login_condition(op: str, n: int) -> dict[str, Any]:
    return {"type": "event", "event": "Login", "count": {"op": op, "n": n}, "window": {"days": 7}}


@pytest.mark.parametrize(("op", "n", "expected"), [
    ("at_least", 2, True), ("at_least", 3, False), ("at_most", 2, True), ("at_most", 1, False),
    ("exactly", 2, True), ("exactly", 1, False), ("exactly", 0, False),
])
def test_event_counts(op: str, n: int, expected: bool) -> None:
    facts = logins("2026-11-22T00:00:00Z", "2026-11-28T11:00:00Z", "2026-11-21T23:59:59Z")
    assert check(login_condition(op, n), facts) is expected


def test_an_event_leaves_the_window_at_the_start_of_the_day_after_its_last_day() -> None:
    facts = logins("2026-11-22T10:00:00Z")
    assert check(login_condition("at_least", 1), facts, datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC))
    assert not check(login_condition("at_least", 1), facts, datetime(2026, 11, 29, tzinfo=UTC))
    assert check(login_condition("exactly", 0), facts, datetime(2026, 11, 29, tzinfo=UTC))


def test_an_empty_history_has_not_performed_anything() -> None:
    assert check(login_condition("exactly", 0), Facts())
    assert check(login_condition("at_most", 3), Facts())
    assert not check(login_condition("at_least", 1), Facts())


def test_computed_traits_accounts_and_audiences() -> None:
    facts = Facts(computed={"ltv": 1200}, accounts=[{"plan": "free"}, {"plan": "enterprise", "seats": "many"}],
                  audiences=frozenset({"customers"}))
    assert check({"type": "computed_trait", "trait": "ltv", "op": "gte", "value": 1000}, facts)
    assert not check({"type": "computed_trait", "trait": "orders", "op": "gte", "value": 0}, facts)
    assert check({"type": "account", "trait": "plan", "op": "equals", "value": "enterprise"}, facts)
    assert not check({"type": "account", "trait": "seats", "op": "gt", "value": 10}, facts)
    assert not check({"type": "account", "trait": "plan", "op": "exists"}, Facts())
    assert check({"type": "audience", "audience": "customers"}, facts)
    assert not check({"type": "audience", "audience": "customers", "member": False}, facts)
    assert check({"type": "audience", "audience": "churned", "member": False}, facts)


def test_dependencies_name_every_input_of_an_audience() -> None:
    definition = AudienceDefinition.model_validate({"id": "a", "name": "A", "condition": {"type": "or", "conditions": [
        {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"},
        {"type": "not", "condition": {"type": "account", "trait": "tier", "op": "exists"}},
        {"type": "computed_trait", "trait": "ltv", "op": "gt", "value": 5},
        {"type": "audience", "audience": "customers"},
        {"type": "event", "event_type": "page", "event": "Pricing",
         "window": {"from": "2026-01-01", "to": "2026-01-02"}},
    ]}})
    found = dependencies(definition)
    assert found.traits == {"plan"}
    assert found.account_traits == {"tier"}
    assert found.computed_traits == {"ltv"}
    assert found.audiences == {"customers"}
    assert found.events == {("page", "Pricing")}
    assert len(found.aggregates) == 1
    assert found.time_based is False


@pytest.mark.parametrize("condition", [
    {"type": "event", "event": "Login", "window": {"days": 30}},
    {"type": "trait", "trait": "last_login", "op": "within_last_days", "days": 30},
])
def test_sliding_windows_make_an_audience_time_based(condition: dict[str, Any]) -> None:
    assert dependencies(CONDITION.validate_python(condition)).time_based


def test_dependencies_of_a_computed_trait_are_its_events() -> None:
    trait = ComputedTraitDefinition.model_validate({"id": "orders_30d", "name": "Orders", "aggregate": {
        "kind": "count", "event": "Order Completed", "window": {"days": 30}}})
    found = dependencies(trait)
    assert found.events == {("track", "Order Completed")}
    assert list(found.aggregates) == [trait.aggregate.aggregate_id()]
    assert found.time_based


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(["2026-11-28", "2026-11-28T10:00:00Z", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
OPERATORS = [
    {"op": "equals", "value": "x"}, {"op": "not_equals", "value": 1}, {"op": "contains", "value": "x"},
    {"op": "starts_with", "value": "x"}, {"op": "in", "values": [1, "x", True]}, {"op": "exists"},
    {"op": "not_exists"}, {"op": "gt", "value": 1}, {"op": "lte", "value": 1.5},
    {"op": "before", "value": "2026-01-01"}, {"op": "after", "value": "2026-01-01T00:00:00Z"},
    {"op": "within_last_days", "days": 30},
]


@settings(max_examples=300, deadline=None)
@given(trait_value=json_values, operator=st.sampled_from(OPERATORS))
def test_any_json_trait_value_gives_a_boolean_and_never_raises(trait_value: Any, operator: dict[str, Any]) -> None:
    for kind in ("trait", "account", "computed_trait"):
        facts = Facts(traits={"t": trait_value}, computed={"t": trait_value}, accounts=[{"t": trait_value}])
        assert check({"type": kind, "trait": "t", **operator}, facts) in (True, False)
