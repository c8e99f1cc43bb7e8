"""Property: memberships kept incrementally (unification stage -> identity stream -> evaluator)
equal a from-scratch evaluation over the same events, whatever the batching, duplicates,
redeliveries and merges."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from cdp import resources
from cdp.aws.identity_graph import DynamoIdentityGraph
from cdp.aws.membership_store import MembershipStore
from cdp.aws.profile_store import ProfileRecords
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.identity.profile_state import ProfileState, fold_event
from cdp.segmentation import aggregates
from cdp.segmentation.evaluate import Facts, evaluate
from cdp.segmentation.membership import DependencyIndex
from cdp.segmentation.tallies import StreamPosition
from cdp.unification import UnificationStage
from tests.conftest import FakeLambdaContext, load_handler
from tests.integration.conftest import _reset_handler_caches, create_resources
from tests.integration.test_segment_evaluator import IdentityStream, define
from tests.segmentation_items import audience, catalog_of, computed_trait

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LTV = computed_trait("ltv", {"kind": "sum", "event": "Order Completed", "property": "total"})
DEFINITIONS = (
    LTV,
    audience("pricing", {"type": "event", "event_type": "page", "event": "Pricing",
                         "count": {"op": "at_least", "n": 2}, "window": {"days": 7}}),
    audience("spender", {"type": "computed_trait", "trait": "ltv", "op": "gte", "value": 50}),
    audience("pro", {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"}),
    audience("keen-pro", {"type": "and", "conditions": [{"type": "audience", "audience": "pro"},
                                                        {"type": "audience", "audience": "pricing"}]}),
    audience("no-orders", {"type": "event", "event": "Order Completed", "count": {"op": "exactly", "n": 0}}),
)
CATALOG = catalog_of(*DEFINITIONS)
PEOPLE = ("ana", "bo", "cy")


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of three people on two devices each; some sign in (merging their devices)."""
    events = []
    for n in range(draw(st.integers(min_value=1, max_value=14))):
        person = draw(st.sampled_from(PEOPLE))
        ids: dict[str, Any] = {"anonymousId": f"{person}-{draw(st.sampled_from(['web', 'app']))}"}
        if draw(st.booleans()):
            ids["userId"] = person
        at = NOW - timedelta(days=draw(st.integers(min_value=0, max_value=9)), hours=draw(st.integers(0, 11)))
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        base = {"messageId": f"e{n}", "timestamp": stamp, "receivedAt": stamp, **ids}
        kind = draw(st.sampled_from(["pricing", "order", "plan"]))
        if kind == "pricing":
            events.append({**base, "type": "page", "name": "Pricing"})
        elif kind == "order":
            events.append({**base, "type": "track", "event": "Order Completed",
                           "properties": {"total": draw(st.sampled_from([10, 25, 40]))}})
        else:
            events.append({**base, "type": "identify", "traits": {"plan": draw(st.sampled_from(["pro", "free"]))}})
    return events


def evaluate_stream(evaluator: Any, stream: IdentityStream, twice: bool = False) -> None:
    """Deliver what the identity stream holds since the last delivery, as the mapping would
    (``twice``: and deliver the same batch again, as a retry after the writes landed)."""
    event = stream.event()
    for _ in range(2 if twice else 1):
        if event["Records"]:
            assert evaluator.handler(event, FakeLambdaContext()) == {"batchItemFailures": []}


def expected_memberships(events: list[dict[str, Any]], graph: DynamoIdentityGraph) -> dict[str, dict[str, bool]]:
    """From scratch: each live profile's events folded into new states, evaluated at NOW."""
    by_profile: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        identifier = Identifier("user_id", event["userId"]) if "userId" in event else \
            Identifier("anonymous_id", event["anonymousId"])
        profile = graph.lookup_identifier(identifier)
        assert profile is not None
        by_profile.setdefault(profile, []).append(event)
    index = DependencyIndex.of(CATALOG)
    expected = {}
    for profile, own in by_profile.items():
        state = ProfileState()
        states = {sid: aggregates.empty(a.spec) for sid, a in CATALOG.specs.items()}
        for event in own:
            state = fold_event(state, event)
            states = {sid: aggregates.fold(s, event) for sid, s in states.items()}
        computed = {tid: aggregates.value(states[d.aggregate.aggregate_id()], NOW)
                    for tid, d in CATALOG.computed_traits.items()}
        members: set[str] = set()
        for audience_id in index.order:
            facts = Facts({n: t.value for n, t in state.traits.items()}, computed, states, (), frozenset(members))
            if evaluate(CATALOG.audiences[audience_id].condition, facts, NOW):
                members.add(audience_id)
        expected[profile] = {aid: aid in members for aid in CATALOG.audiences}
    return expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=histories(), cuts=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=6),
       again=st.lists(st.integers(min_value=0, max_value=13), max_size=4),
       deliveries=st.lists(st.sampled_from(["wait", "once", "twice"]), min_size=1, max_size=6))
def test_incremental_memberships_equal_a_from_scratch_evaluation(events, cuts, again, deliveries):
    with mock_aws():
        _reset_handler_caches()
        create_resources()
        define(*DEFINITIONS)
        evaluator = load_handler("segment_evaluator")
        evaluator.dependencies().now = lambda: NOW
        stream = IdentityStream()
        ddb = boto3.client("dynamodb")
        graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, IdentityConfig(),
                                    records_table=resources.EVENTS_TABLE.local_name, sleep=lambda s: None)
        stage = UnificationStage(graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), IdentityConfig(),
                                 CATALOG, now=lambda: NOW)
        staged = [("src", e, StreamPosition(f"k-{e['anonymousId']}", n)) for n, e in enumerate(events, start=1)]
        # Batches as cut by the mapping, some delivered twice (a retry after the writes landed).
        # The evaluator sees each batch's changes at once, or several batches' together
        # ("wait": a profile changed more than once in one invocation), some twice.
        position = 0
        delivery = itertools.cycle(deliveries)
        for size in itertools.cycle(cuts):
            if position >= len(staged):
                break
            batch = staged[position:position + size]
            stage.store(batch)
            if again and again[0] % 2 == 0:
                stage.store(batch)
            again = again[1:]
            position += size
            how = next(delivery)
            if how != "wait":
                evaluate_stream(evaluator, stream, twice=how == "twice")
        evaluate_stream(evaluator, stream)

        expected = expected_memberships(events, graph)
        store = MembershipStore(ddb, resources.MEMBERSHIPS_TABLE.local_name)
        for profile, wanted in expected.items():
            stored = {aid: m.member for aid, m in store.of_profile(profile).items()}
            actual = {aid: stored.get(aid, False) for aid in CATALOG.audiences}
            assert actual == wanted, (profile, events)
        live = set(expected)
        for item in ddb.scan(TableName=resources.MEMBERSHIPS_TABLE.local_name)["Items"]:
            if item["profile_id"]["S"] not in live:  # a profile merged away is in no audience
                assert not item["member"]["BOOL"], item
        _reset_handler_caches()
