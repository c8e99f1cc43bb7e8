"""Aggregate states on profiles, kept by the unification stage on moto: folded once per event,
combined by merges, unchanged by redeliveries and by a batch redone after a partial commit."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import boto3

from cdp import resources
from cdp.aws.identity_graph import CommitConflict, DynamoIdentityGraph
from cdp.aws.profile_store import ProfileRecords
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.segmentation import aggregates
from cdp.segmentation.catalog import ActiveSpec, Catalog
from cdp.segmentation.definitions import AggregateSpec, ComputedTraitDefinition
from cdp.segmentation.tallies import StreamPosition, aggregate_states, tallies_from_json
from cdp.unification import UnificationStage
from tests.integration.conftest import scan

CONFIG = IdentityConfig()
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
VIEWS = AggregateSpec(kind="count", event_type="page", event="Pricing", window={"days": 7})
SPENT = AggregateSpec(kind="sum", event="Order Completed", property="total")
CATALOG = Catalog(
    computed_traits={"ltv": ComputedTraitDefinition(id="ltv", name="LTV", aggregate=SPENT)},
    specs={VIEWS.aggregate_id(): ActiveSpec(VIEWS, "g1", "2026-01-01T00:00:00.000Z"),
           SPENT.aggregate_id(): ActiveSpec(SPENT, "g1", "2026-01-01T00:00:00.000Z")})
_seq = itertools.count(1000)


def staged(event: dict[str, Any], key: str = "shard-0|pk") -> tuple[str, dict[str, Any], StreamPosition]:
    return "src_test", event, StreamPosition(key, next(_seq))


def page(n: int, **ids: Any) -> dict[str, Any]:
    at = f"2026-11-{22 + n % 7}T10:00:00.000Z"
    return {"type": "page", "name": "Pricing", "messageId": f"page-{n}", "timestamp": at, "receivedAt": at, **ids}


def order(n: int, total: float, **ids: Any) -> dict[str, Any]:
    at = "2026-11-20T10:00:00.000Z"
    return {"type": "track", "event": "Order Completed", "messageId": f"order-{n}", "timestamp": at,
            "receivedAt": at, "properties": {"total": total}, **ids}


def make_stage() -> tuple[UnificationStage, DynamoIdentityGraph]:
    ddb = boto3.client("dynamodb")
    graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, CONFIG,
                                records_table=resources.EVENTS_TABLE.local_name, sleep=lambda s: None)
    records = ProfileRecords(ddb, resources.EVENTS_TABLE.local_name)
    return UnificationStage(graph, records, CONFIG, CATALOG, now=lambda: NOW), graph


def tallies_of(graph: DynamoIdentityGraph, type_name: str, value: str) -> tuple[int, float]:
    profile = graph.lookup_identifier(Identifier(type_name, value))
    assert profile is not None
    items = {i["pk"]: i for i in scan(resources.IDENTITY_TABLE.local_name)}
    item = items.get(f"prof#{profile}") or next(i for i in items.values() if i.get("profile_id") == profile
                                                 and i.get("solo"))
    states = aggregate_states(tallies_from_json(item.get("agg")), CATALOG.specs)
    return (aggregates.value(states[VIEWS.aggregate_id()], NOW), aggregates.value(states[SPENT.aggregate_id()], NOW))


def test_selected_events_are_counted_on_the_profile_and_redelivery_changes_nothing(aws):
    stage, graph = make_stage()
    batch = [staged(page(1, anonymousId="v1")), staged(page(2, anonymousId="v1")),
             staged(order(1, 19.99, anonymousId="v1")), staged({**page(3, anonymousId="v1"), "name": "Home"})]
    stage.store(batch)
    assert tallies_of(graph, "anonymous_id", "v1") == (2, 19.99)
    before = scan(resources.IDENTITY_TABLE.local_name)
    stage.store(batch)  # Lambda delivers the batch again after its writes landed
    stage.store(batch[2:])  # and a bisected half
    assert scan(resources.IDENTITY_TABLE.local_name) == before


def test_a_home_profile_keeps_its_aggregates_in_its_identifier_item(aws):
    stage, _graph = make_stage()
    stage.store([staged(page(1, anonymousId="v1"))])
    items = scan(resources.IDENTITY_TABLE.local_name)
    assert [i["pk"] for i in items] == ["ident#anonymous_id:v1"] and "agg" in items[0]


def test_a_merge_adds_the_profiles_counts(aws):
    stage, graph = make_stage()
    stage.store([staged(page(1, anonymousId="laptop")), staged(page(2, anonymousId="laptop"))])
    stage.store([staged(order(1, 100, userId="ana", anonymousId="phone"), key="shard-1|pk")])
    stage.store([staged(page(3, userId="ana", anonymousId="laptop"))])
    assert tallies_of(graph, "user_id", "ana") == (3, 100)
    assert tallies_of(graph, "anonymous_id", "laptop") == (3, 100)


def test_a_batch_redone_after_a_partial_commit_counts_each_event_once(aws, monkeypatch):
    stage, graph = make_stage()
    stage.store([staged(page(1, userId="u1")), staged(page(2, userId="u2"))])
    real_flush = graph.flush
    calls = {"n": 0}

    def flush_then_conflict() -> None:
        calls["n"] += 1
        real_flush()
        if calls["n"] == 1:  # the writes landed, then a later transaction of the batch failed
            raise CommitConflict("simulated")

    monkeypatch.setattr(graph, "flush", flush_then_conflict)
    stage.store([staged(page(3, userId="u1")), staged(order(1, 5, userId="u2")), staged(page(4, userId="u1"))])
    assert stage.stats.batch_conflicts == 1
    assert tallies_of(graph, "user_id", "u1") == (3, 0)
    assert tallies_of(graph, "user_id", "u2") == (1, 5)


def test_without_a_catalog_profiles_carry_no_aggregates(aws):
    ddb = boto3.client("dynamodb")
    graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, CONFIG,
                                records_table=resources.EVENTS_TABLE.local_name)
    UnificationStage(graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), CONFIG).store(
        [staged(page(1, anonymousId="v1"))])
    assert all("agg" not in i for i in scan(resources.IDENTITY_TABLE.local_name))
