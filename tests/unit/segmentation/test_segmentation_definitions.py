"""The definition language: validation pointing at the offending part, limits, summaries."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from cdp.segmentation.definitions import (
    MAX_DEPTH,
    MAX_NODES,
    AggregateSpec,
    AudienceDefinition,
    ComputedTraitDefinition,
    Condition,
    problems,
)

CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)


def audience(condition: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "test-audience", "name": "Test", "condition": condition, **extra}


def errors_of(data: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        AudienceDefinition.model_validate(data)
    return problems(caught.value)


def trait(name: str, op: str, **operand: Any) -> dict[str, Any]:
    return {"type": "trait", "trait": name, "op": op, **operand}


@pytest.mark.parametrize(("condition", "summary"), [
    (trait("plan", "equals", value="pro"), 'trait plan = "pro"'),
    (trait("plan", "not_equals", value="free"), 'trait plan != "free"'),
    (trait("email", "contains", value="@acme"), 'trait email contains "@acme"'),
    (trait("email", "starts_with", value="ana"), 'trait email starts with "ana"'),
    (trait("plan", "in", values=["pro", "team"]), 'trait plan is one of ["pro", "team"]'),
    (trait("email", "exists"), "trait email exists"),
    (trait("n", "in", values=list(range(8))), "trait n is one of [0, 1, 2, 3, 4] and 3 more"),
    (trait("email", "not_exists"), "trait email does not exist"),
    (trait("age", "gt", value=30), "trait age > 30"),
    (trait("age", "gte", value=30), "trait age >= 30"),
    (trait("age", "lt", value=1.5), "trait age < 1.5"),
    (trait("age", "lte", value=30), "trait age <= 30"),
    (trait("signed_up", "before", value="2026-01-01"), "trait signed_up before 2026-01-01"),
    (trait("signed_up", "after", value="2026-01-01T10:00:00Z"), "trait signed_up after 2026-01-01T10:00:00Z"),
    (trait("last_login", "within_last_days", days=30), "trait last_login within the last 30 days"),
    ({"type": "account", "trait": "plan", "op": "equals", "value": "enterprise"},
     'an account\'s trait plan = "enterprise"'),
    ({"type": "computed_trait", "trait": "lifetime_value", "op": "gte", "value": 1000},
     "computed trait lifetime_value >= 1000"),
    ({"type": "audience", "audience": "customers"}, 'in audience "customers"'),
    ({"type": "audience", "audience": "customers", "member": False}, 'not in audience "customers"'),
    ({"type": "event", "event": "Signed Up"}, 'performed "Signed Up"'),
    ({"type": "event", "event": "Login", "count": {"op": "exactly", "n": 0}, "window": {"days": 30}},
     'has not performed "Login" in the last 30 days'),
    ({"type": "event", "event_type": "page", "event": "Pricing", "count": {"op": "at_least", "n": 3},
      "window": {"days": 7}}, 'viewed page "Pricing" at least 3 times in the last 7 days'),
    ({"type": "event", "event_type": "screen", "count": {"op": "at_most", "n": 1}, "window": {"days": 1}},
     "viewed any screen at most once in the last 1 day"),
    ({"type": "event", "event": "Order Completed", "where": [{"property": "total", "op": "gt", "value": 100}],
      "count": {"op": "exactly", "n": 2}, "window": {"from": "2026-01-01", "to": "2026-01-31"}},
     'performed "Order Completed" where total > 100 exactly 2 times between 2026-01-01 and 2026-01-31'),
    ({"type": "event"}, "performed any track event"),
])
def test_every_node_has_a_readable_summary(condition: dict[str, Any], summary: str) -> None:
    assert CONDITION.validate_python(condition).summary() == summary


def test_and_or_not_summaries_group_nested_conditions() -> None:
    definition = AudienceDefinition.model_validate(audience({"type": "and", "conditions": [
        {"type": "event", "event_type": "page", "event": "Pricing Viewed", "count": {"n": 3}, "window": {"days": 7}},
        trait("plan", "equals", value="pro"),
        {"type": "or", "conditions": [trait("a", "exists"), {"type": "not", "condition": trait("b", "exists")}]},
    ]}))
    assert definition.summary() == (
        'viewed page "Pricing Viewed" at least 3 times in the last 7 days AND trait plan = "pro"'
        " AND (trait a exists OR NOT (trait b exists))"
    )


def test_aggregate_and_computed_trait_summaries() -> None:
    spec = AggregateSpec(kind="sum", event="Order Completed", property="total")
    assert spec.summary() == 'sum of total of "Order Completed" events over all time'
    counter = AggregateSpec.model_validate({"kind": "count", "event_type": "page", "window": {"days": 30}})
    assert counter.summary() == "number of page views in the last 30 days"
    trait_def = ComputedTraitDefinition.model_validate({"id": "top_category", "name": "Top category", "aggregate": {
        "kind": "most_frequent", "event": "Product Viewed", "property": "category", "window": {"days": 90}}})
    assert trait_def.summary() == 'most frequent value of category of "Product Viewed" events in the last 90 days'


def test_an_error_points_at_the_offending_node_in_a_nested_condition() -> None:
    found = errors_of(audience({"type": "and", "conditions": [
        trait("plan", "equals", value="pro"),
        {"type": "event", "event": "Login", "count": {"op": "at_least", "n": -1}},
    ]}))
    assert found == [{"field": "condition.and.conditions.1.event.count.n",
                      "reason": "Input should be greater than or equal to 0"}]


@pytest.mark.parametrize(("condition", "field", "reason"), [
    (trait("age", "gt", value="thirty"), "condition.trait", "op 'gt' needs a number as 'value'"),
    (trait("age", "gt", value=True), "condition.trait", "op 'gt' needs a number as 'value'"),
    (trait("plan", "equals"), "condition.trait", "op 'equals' needs 'value'"),
    (trait("plan", "exists", value="x"), "condition.trait", "op 'exists' takes no 'value'"),
    (trait("plan", "in", value="x"), "condition.trait", "op 'in' takes no 'value'"),
    (trait("plan", "in", values=[]), "condition.trait.values", "List should have at least 1 item after validation"),
    (trait("d", "before", value="yesterday"), "condition.trait", "op 'before': 'yesterday' is not an ISO date"),
    (trait("d", "within_last_days", days=0), "condition.trait.days", "Input should be greater than or equal to 1"),
    (trait("d", "within_last_days", days="7"), "condition.trait.days", "Input should be a valid integer"),
    (trait("p", "starts_with", value=1), "condition.trait", "op 'starts_with' needs a string as 'value'"),
    (trait("p", "equal", value=1), "condition.trait.op", "Input should be"),
    ({"type": "trait", "trait": "p", "op": "exists", "colour": "red"}, "condition.trait.colour",
     "Extra inputs are not permitted"),
    ({"type": "segment"}, "condition", "Input tag 'segment' found using 'type' does not match"),
    ({"type": "event", "event_type": "identify"}, "condition.event.event_type", "Input should be"),
    ({"type": "event", "window": {"from": "2026-02-01", "to": "2026-01-01"}}, "condition.event.window.between",
     "'to' is before 'from'"),
    ({"type": "event", "where": [{"property": "x", "op": "within_last_days", "days": 3}]},
     "condition.event.where.0.op", "property filters cannot use 'within_last_days'"),
    ({"type": "and", "conditions": []}, "condition.and.conditions", "List should have at least 1 item"),
    ({"type": "audience", "audience": "test-audience"}, "(definition)", "an audience cannot refer to itself"),
    ({"type": "audience", "audience": "Not A Slug"}, "condition.audience.audience", "String should match pattern"),
])
def test_invalid_conditions_are_refused_with_the_field_and_reason(
    condition: dict[str, Any], field: str, reason: str,
) -> None:
    found = errors_of(audience(condition))
    assert any(p["field"] == field and p["reason"].startswith(reason) for p in found), found


def test_definition_fields_are_validated() -> None:
    found = errors_of({"id": "Bad Id", "name": "", "condition": trait("a", "exists"), "schedule_hours": 0})
    assert {p["field"] for p in found} == {"id", "name", "schedule_hours"}


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = trait("a", "exists")
    for _ in range(depth - 1):
        node = {"type": "not", "condition": node}
    return node


def test_nesting_up_to_the_depth_limit_is_accepted_and_one_more_is_refused() -> None:
    AudienceDefinition.model_validate(audience(nested(MAX_DEPTH)))
    found = errors_of(audience(nested(MAX_DEPTH + 1)))
    assert found[0]["field"] == "condition"
    assert found[0]["reason"].startswith(f"nested more than {MAX_DEPTH} levels deep (at condition.not.condition")


def test_more_than_the_node_limit_is_refused() -> None:
    AudienceDefinition.model_validate(audience({"type": "or", "conditions": [trait("a", "exists")] * (MAX_NODES - 1)}))
    found = errors_of(audience({"type": "or", "conditions": [trait("a", "exists")] * MAX_NODES}))
    assert found == [{"field": "condition", "reason": f"more than {MAX_NODES} conditions"}]


def test_aggregate_property_is_required_except_for_counters() -> None:
    with pytest.raises(ValidationError, match="kind 'sum' needs 'property'"):
        AggregateSpec.model_validate({"kind": "sum", "event": "Order Completed"})
    with pytest.raises(ValidationError, match="kind 'count' takes no 'property'"):
        AggregateSpec.model_validate({"kind": "count", "property": "total"})


def test_computed_trait_windows_are_sliding_or_all_time() -> None:
    with pytest.raises(ValidationError) as caught:
        ComputedTraitDefinition.model_validate({"id": "x", "name": "X", "aggregate": {
            "kind": "count", "window": {"from": "2026-01-01", "to": "2026-01-02"}}})
    assert problems(caught.value)[0]["field"] == "aggregate"


def test_equal_event_conditions_share_one_stable_aggregate_id() -> None:
    one = CONDITION.validate_python({"type": "event", "event": "Login", "window": {"days": 30}})
    two = CONDITION.validate_python({"window": {"days": 30}, "event": "Login", "type": "event",
                                     "count": {"op": "exactly", "n": 0}})
    other = CONDITION.validate_python({"type": "event", "event": "Login", "window": {"days": 31}})
    assert one.aggregate().aggregate_id() == two.aggregate().aggregate_id()
    assert one.aggregate().aggregate_id() != other.aggregate().aggregate_id()
    # Pinned: ids key stored states, so the canonical form must not drift silently.
    assert one.aggregate().aggregate_id() == "agg_68daf72dcd6de6277a85"
