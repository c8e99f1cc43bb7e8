"""bench.segmentation: the pure parts (generated catalog, profile changes, cost arithmetic)."""

from __future__ import annotations

import random

import pytest

from bench.segmentation import (
    AFFECTED_TRAIT,
    NOW,
    PRICING,
    PhaseFigures,
    build_catalog,
    cost_per_million,
    make_profiles,
    next_plan,
    profile_history,
    reading_the_change,
    schedule_extrapolation,
    with_change,
)
from cdp.segmentation.catalog import ActiveSpec, Catalog, needed_specs
from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition
from cdp.segmentation.evaluate import dependencies
from cdp.segmentation.membership import DependencyIndex, changed_inputs


def catalog_of(audiences: int, affected: int = 5, windowed_share: float = 0.4) -> Catalog:
    audience_docs, trait_docs = build_catalog(audiences, affected, windowed_share)
    parsed = {d["id"]: AudienceDefinition.model_validate(d) for d in audience_docs}
    traits = {d["id"]: ComputedTraitDefinition.model_validate(d) for d in trait_docs}
    specs = {sid: ActiveSpec(spec, "g1", "2000-01-01T00:00:00.000Z")
             for sid, spec in needed_specs([*parsed.values(), *traits.values()]).items()}
    return Catalog(parsed, traits, specs)


def pricing_specs(catalog: Catalog) -> set[str]:
    return {sid for sid, a in catalog.specs.items() if a.spec.event_type == "page" and a.spec.event == PRICING}


@pytest.mark.parametrize("audiences", [10, 100, 1000])
def test_exactly_k_audiences_read_what_the_change_touches(audiences):
    catalog = catalog_of(audiences)
    index = DependencyIndex.of(catalog)
    assert len(catalog.audiences) == audiences
    hit = index.affected(traits={AFFECTED_TRAIT}, aggregates=pricing_specs(catalog))
    assert sorted(hit) == [f"hot-{k:03d}" for k in range(5)]


def test_the_catalog_mixes_every_kind_of_condition():
    catalog = catalog_of(200)
    kinds = set()
    for definition in catalog.audiences.values():
        found = dependencies(definition)
        kinds |= {"trait"} if found.traits else set()
        kinds |= {"computed"} if found.computed_traits else set()
        kinds |= {"audience"} if found.audiences else set()
        kinds |= {"timed"} if found.time_based else set()
        kinds |= {"event"} if found.events else set()
        kinds |= {definition.condition.type}
    assert {"trait", "computed", "audience", "timed", "event", "and", "or"} <= kinds


def test_windowed_share_sets_how_many_audiences_are_time_based():
    none = DependencyIndex.of(catalog_of(300, windowed_share=0.0))
    some = DependencyIndex.of(catalog_of(300, windowed_share=0.4))
    # Only the affected audiences that read the 7- or 30-day Pricing counters.
    assert none.time_based <= {f"hot-{k:03d}" for k in range(5)}
    assert 0.3 * 295 < len(some.time_based - none.time_based) < 0.5 * 295


def test_same_seed_same_catalog():
    assert build_catalog(50, 5, 0.4, seed=1) == build_catalog(50, 5, 0.4, seed=1)
    assert build_catalog(50, 5, 0.4, seed=1) != build_catalog(50, 5, 0.4, seed=2)


def test_affected_must_fit():
    with pytest.raises(ValueError):
        build_catalog(3, 5, 0.4)


def test_a_change_touches_plan_and_the_pricing_counters_only():
    catalog = catalog_of(100)
    (item,) = make_profiles(1, catalog, seed=3)
    changed = with_change(item, catalog, NOW, pricing_view=True, new_plan=True)
    traits, specs = changed_inputs(item, changed)
    assert traits == {AFFECTED_TRAIT}
    assert specs and specs <= pricing_specs(catalog)
    assert int(changed["version"]["N"]) == int(item["version"]["N"]) + 1
    quiet = with_change(item, catalog, NOW, pricing_view=False, new_plan=False, nickname="x")
    assert changed_inputs(item, quiet) == ({"nickname"}, set())


def test_the_index_names_the_k_audiences_for_the_change():
    assert reading_the_change(catalog_of(1000)) == [f"hot-{k:03d}" for k in range(5)]


def test_history_is_in_the_past_and_plans_cycle():
    events = profile_history(random.Random(1), NOW)
    assert events and all(e["timestamp"] <= NOW.isoformat().replace("+00:00", "Z") for e in events)
    assert next_plan("enterprise") == "free"
    assert next_plan(None) == "free"


def test_cost_per_million_changes():
    figures = PhaseFigures("change", changes=1000, invocations=10, cpu_s=2.0, aws_calls=3000, log_bytes=0,
                           write_units=3000, read_units=1000, kinesis_records=500,
                           kinesis_on_demand_bytes=500 * 1024)
    cost = cost_per_million(figures, memory_mb=512, batch=100)
    assert cost["lambda_requests"] == pytest.approx(10_000 * 0.20 / 1e6)
    assert cost["dynamodb_writes"] == pytest.approx(3 * 0.625)
    assert cost["dynamodb_reads"] == pytest.approx(1 * 0.125)
    assert cost["kinesis_ingest"] == pytest.approx(500_000 * 1024 / 1024**3 * 0.08)
    # 2 ms CPU per change at 512/1769 of a vCPU, plus 3 calls of 10 ms.
    seconds = (2.0 / (512 / 1769) + 30.0) * 1e6 / 1000
    assert cost["lambda_duration"] == pytest.approx(seconds * 0.5 * 0.0000133334)


def test_median_of_rounds_is_the_cpu_figure():
    figures = PhaseFigures("change", changes=30, cpu_s=1.0, round_cpu_ms=[1.0, 5.0, 2.0])
    assert figures.cpu_ms == 2.0
    assert PhaseFigures("new", changes=10, cpu_s=0.02).cpu_ms == pytest.approx(2.0)


def test_schedule_extrapolation():
    out = schedule_extrapolation(0.1, 1_000_000, {"a": 1e-6}, {"b": 2e-6}, {"c": 1e-4})
    assert out["touched_per_day"] == 100_000
    assert out["total_usd_per_day"] == pytest.approx(24 * 1e-4 + 100_000 * 3e-6)
