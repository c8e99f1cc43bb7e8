"""The sample definitions in examples/audiences validate, summarise, and refer only to each other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cdp.segmentation.aggregates import empty, fold, value
from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition
from cdp.segmentation.evaluate import AccountFacts, Facts, dependencies, evaluate

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "audiences"
AUDIENCE_FILES = sorted(EXAMPLES.glob("*.json"))
TRAIT_FILES = sorted((EXAMPLES / "computed_traits").glob("*.json"))


def load_audience(name: str) -> AudienceDefinition:
    return AudienceDefinition.model_validate_json((EXAMPLES / f"{name}.json").read_text())


def test_the_use_cases_of_the_issue_all_have_samples() -> None:
    assert {p.stem for p in AUDIENCE_FILES} >= {
        "pricing-page-interest", "churn-risk", "current-customers", "clv-high", "clv-medium", "clv-low",
        "high-intent-accounts",
    }
    assert "lifetime_value" in {p.stem for p in TRAIT_FILES}


@pytest.mark.parametrize("path", AUDIENCE_FILES, ids=lambda p: p.stem)
def test_every_sample_audience_validates_and_summarises(path: Path) -> None:
    definition = AudienceDefinition.model_validate_json(path.read_text())
    assert definition.id == path.stem
    assert definition.summary()
    found = dependencies(definition)
    assert found.audiences <= {p.stem for p in AUDIENCE_FILES}
    assert found.computed_traits <= {p.stem for p in TRAIT_FILES}


@pytest.mark.parametrize("path", TRAIT_FILES, ids=lambda p: p.stem)
def test_every_sample_computed_trait_validates_and_summarises(path: Path) -> None:
    definition = ComputedTraitDefinition.model_validate_json(path.read_text())
    assert definition.id == path.stem
    assert definition.summary()


def test_the_behavioural_sample_reads_as_its_use_case() -> None:
    assert load_audience("pricing-page-interest").summary() == (
        'viewed page "Pricing" at least 3 times in the last 7 days'
    )
    assert load_audience("churn-risk").summary() == (
        'in audience "current-customers" AND has not performed "Signed In" in the last 30 days'
        ' AND performed "Feature Used" at least 20 times in the last 90 days'
        ' AND performed "Feature Used" at most 3 times in the last 30 days'
    )


def test_the_pricing_sample_fills_on_the_third_view_and_empties_when_the_first_leaves_the_window() -> None:
    definition = load_audience("pricing-page-interest")
    spec = definition.condition.aggregate()  # type: ignore[union-attr]
    start = datetime(2026, 11, 20, 9, tzinfo=UTC)
    state = empty(spec)
    for day in range(3):
        facts = Facts(aggregates={spec.aggregate_id(): state})
        assert not evaluate(definition.condition, facts, start + timedelta(days=day))
        at = (start + timedelta(days=day)).isoformat()
        state = fold(state, {"type": "page", "name": "Pricing", "timestamp": at, "messageId": at})
    facts = Facts(aggregates={spec.aggregate_id(): state})
    assert evaluate(definition.condition, facts, start + timedelta(days=2))
    assert evaluate(definition.condition, facts, datetime(2026, 11, 26, 23, 59, tzinfo=UTC))
    assert not evaluate(definition.condition, facts, datetime(2026, 11, 27, tzinfo=UTC))


def test_the_lifetime_value_tiers_partition_buyers() -> None:
    trait_file = EXAMPLES / "computed_traits" / "lifetime_value.json"
    trait = ComputedTraitDefinition.model_validate_json(trait_file.read_text())
    tiers = [load_audience(f"clv-{tier}") for tier in ("low", "medium", "high")]
    now = datetime(2026, 11, 28, tzinfo=UTC)
    for totals in ([31.5], [150, 49.99, 0.01], [999.99], [1000], [600, 600]):
        state = empty(trait.aggregate)
        for i, total in enumerate(totals):
            state = fold(state, {"type": "track", "event": "Order Completed", "timestamp": "2026-11-01T10:00:00Z",
                                 "messageId": str(i), "properties": {"total": total}})
        facts = Facts(computed={trait.id: value(state, now)})
        assert sum(evaluate(tier.condition, facts, now) for tier in tiers) == 1, totals
    assert not any(evaluate(tier.condition, Facts(computed={trait.id: 0}), now) for tier in tiers)


def test_the_high_intent_sample_needs_three_active_members_of_one_account_this_week() -> None:
    definition = load_audience("high-intent-accounts")
    assert definition.summary() == (
        'performed "Feature Used" in the last 7 days'
        ' AND an account has at least 3 members who performed "Feature Used" in the last 7 days'
    )
    found = dependencies(definition)
    assert not found.account_traits and len(found.activity) == 1 and found.time_based
    [activity_id] = found.activity
    own = definition.condition.conditions[0].aggregate()  # type: ignore[union-attr]
    used = fold(empty(own), {"type": "track", "event": "Feature Used", "timestamp": "2026-11-27T10:00:00Z",
                             "messageId": "m1"})
    team = AccountFacts("g1", {}, {activity_id: {"2026-11-22": ["p2"], "2026-11-27": ["p1", "p3"]}})
    facts = Facts(aggregates={own.aggregate_id(): used}, accounts=[team])
    assert evaluate(definition.condition, facts, datetime(2026, 11, 28, 23, tzinfo=UTC))
    assert not evaluate(definition.condition, facts, datetime(2026, 11, 29, tzinfo=UTC))  # p2's day has left
