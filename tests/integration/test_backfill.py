"""The backfill on moto: a computed trait defined after the data gets the exact values of all
the history, each event counted once between the backfill and the stream consumer, also when
the consumer writes during the backfill, when the backfill is stopped and resumed, run twice,
or meets merged and home profiles."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from cdp import resources
from cdp.aws.backfill_store import DynamoBackfill, backfill_status
from cdp.aws.event_store import HistoryEntry, HistoryStore
from cdp.aws.identity_graph import DynamoIdentityGraph, account_key
from cdp.aws.profile_store import ProfileRecords
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.segmentation import aggregates
from cdp.segmentation.account_activity import activity_from_json, buckets_of, member_count, member_tag
from cdp.segmentation.catalog import CatalogStore, SpecRegistry
from cdp.segmentation.definitions import AggregateSpec, AudienceDefinition, ComputedTraitDefinition
from cdp.segmentation.tallies import StreamPosition, aggregate_states, tallies_from_json
from cdp.unification import UnificationStage

CONFIG = IdentityConfig()
REGISTERED = datetime(2026, 11, 28, 10, tzinfo=UTC)
LIVE_FROM = "2026-11-28T10:02:05.000Z"  # registration + 2 x 60 s cache + 5 s margin
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
SPENT = AggregateSpec(kind="sum", event="Order Completed", property="total")
VIEWS = AggregateSpec(kind="count", event_type="page", event="Pricing", window={"days": 7})
TRAITS = {"ltv": SPENT, "pricing_views": VIEWS}
IDENTITY = resources.IDENTITY_TABLE.local_name
EVENTS = resources.EVENTS_TABLE.local_name
SEGMENTS = resources.SEGMENTS_TABLE.local_name
_messages = itertools.count(1)
_sequence = itertools.count(1000)


def order(total: float, received: str, **ids: Any) -> dict[str, Any]:
    n = next(_messages)
    return {"type": "track", "event": "Order Completed", "messageId": f"m{n}", "timestamp": received,
            "originalTimestamp": received, "receivedAt": received, "properties": {"total": total}, **ids}


def view(received: str, **ids: Any) -> dict[str, Any]:
    n = next(_messages)
    return {"type": "page", "name": "Pricing", "messageId": f"m{n}", "timestamp": received,
            "originalTimestamp": received, "receivedAt": received, **ids}


BEFORE = "2026-11-27T09:00:00.000Z"
JUST_BEFORE = "2026-11-28T10:02:04.999Z"
AFTER = "2026-11-28T11:00:00.000Z"


class World:
    """The stream consumer's storage stages (history, then unification) and an oracle of every event."""

    def __init__(self) -> None:
        self.ddb = boto3.client("dynamodb")
        self.history = HistoryStore(self.ddb, EVENTS, sleep=lambda s: None)
        self.graph = DynamoIdentityGraph(self.ddb, IDENTITY, CONFIG, records_table=EVENTS, sleep=lambda s: None)
        catalogs = CatalogStore(self.ddb, SEGMENTS, cache_seconds=0)
        self.stage = UnificationStage(self.graph, ProfileRecords(self.ddb, EVENTS), CONFIG,
                                      catalog=catalogs.current, now=lambda: NOW)
        self.events: list[dict[str, Any]] = []

    def deliver(self, *events: dict[str, Any]) -> None:
        entries = [HistoryEntry("src_test", e, f"shard-0:{next(_sequence)}") for e in events]
        claimed = self.history.claim(entries).claimed
        fresh = [e for e in entries if e.key in claimed]
        self.stage.store([("src_test", e.event, StreamPosition("shard-0|pk", int(e.owner.split(":")[1])))
                          for e in fresh])
        self.events.extend(e.event for e in fresh)

    def define(self) -> None:
        """The computed traits, created after the data (as the admin API does)."""
        definitions = [ComputedTraitDefinition(id=tid, name=tid, aggregate=spec) for tid, spec in TRAITS.items()]
        for d in definitions:
            self.ddb.put_item(TableName=SEGMENTS, Item={"pk": {"S": f"computed_trait#{d.id}"},
                                                        "definition": {"S": d.model_dump_json()},
                                                        "version": {"N": "1"}})
        SpecRegistry(self.ddb, SEGMENTS, cache_seconds=60, now=lambda: REGISTERED).sync(definitions)

    def profile_of(self, type_name: str, value: str) -> str:
        profile = self.graph.lookup_identifier(Identifier(type_name, value))
        assert profile is not None
        return profile

    def values(self, type_name: str, value: str) -> dict[str, Any]:
        """The traits' values stored on the person's live profile."""
        profile = self.profile_of(type_name, value)
        items = {i["pk"]["S"]: i for i in scan_items(IDENTITY)}
        item = items.get(f"prof#{profile}") or next(
            i for i in items.values() if i.get("profile_id", {}).get("S") == profile and "solo" in i)
        catalog = CatalogStore(self.ddb, SEGMENTS, cache_seconds=0).current()
        states = aggregate_states(tallies_from_json(item.get("agg", {}).get("S")), catalog.specs)
        return {tid: aggregates.value(states[spec.aggregate_id()], NOW) for tid, spec in TRAITS.items()}

    def expected(self, type_name: str, value: str) -> dict[str, Any]:
        """The oracle: every event of the person's profile folded, whenever it was received."""
        profile = self.profile_of(type_name, value)
        mine = [e for e in self.events if any(
            self.graph.lookup_identifier(Identifier(t, str(e[f]))) == profile
            for t, f in (("user_id", "userId"), ("anonymous_id", "anonymousId")) if e.get(f))]
        values = {}
        for tid, spec in TRAITS.items():
            state = aggregates.empty(spec)
            for event in mine:
                state = aggregates.fold(state, event)
            values[tid] = aggregates.value(state, NOW)
        return values


def scan_items(table: str) -> list[dict[str, Any]]:
    ddb = boto3.client("dynamodb")
    items: list[dict[str, Any]] = []
    request: dict[str, Any] = {"TableName": table}
    while True:
        page = ddb.scan(**request)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def backfill(**options: Any) -> DynamoBackfill:
    settings: dict[str, Any] = {"segments": 4, "workers": 2, "now": lambda: NOW, "sleep": lambda s: None}
    settings.update(options)
    return DynamoBackfill(lambda: boto3.session.Session().client("dynamodb"), IDENTITY, EVENTS, SEGMENTS, **settings)


def run_in_slices(progress: Any = None) -> list[str]:
    """Invocations of 12 clock ticks (every look at the clock is one) until done, small
    pages and checkpoints every 3 ticks; ``progress()`` is checked between them."""
    ticks = itertools.count()
    clock = lambda: float(next(ticks))  # noqa: E731
    outcomes = []
    for _ in range(100):
        job = backfill(clock=clock, workers=1, checkpoint_seconds=3, page_items=2)
        outcome = job.run(deadline=clock() + 12)
        outcomes.append(outcome.state)
        if outcome.finished:
            break
        if progress is not None:
            status = progress()
            assert status.status == "running" and status.progress < 1
    return outcomes


def run_to_end(job: DynamoBackfill) -> None:
    outcome = job.run(deadline=float("inf"))
    assert outcome.finished and outcome.state == "done", outcome


PEOPLE = [("anonymous_id", "visitor"), ("user_id", "ana"), ("user_id", "bob"), ("anonymous_id", "quiet")]


@pytest.fixture
def world(aws: None) -> Iterator[World]:
    """Data from before the traits exist: a home profile, a home profile that signed up (two
    partitions), two visitors merged by a login (a merged profile), a profile with nothing selected."""
    w = World()
    w.deliver(order(10, BEFORE, anonymousId="visitor"), view(BEFORE, anonymousId="visitor"),
              view(BEFORE, anonymousId="visitor"))
    w.deliver(order(5, BEFORE, anonymousId="ana-laptop"), view(BEFORE, anonymousId="ana-laptop"))
    w.deliver(order(7.5, BEFORE, userId="ana", anonymousId="ana-laptop"))
    w.deliver(view(BEFORE, anonymousId="bob-phone"), order(1.25, BEFORE, anonymousId="bob-tablet"))
    w.deliver(order(100, BEFORE, userId="bob", anonymousId="bob-phone"))
    w.deliver(order(0.5, BEFORE, userId="bob", anonymousId="bob-tablet"))
    w.deliver({**view(BEFORE, anonymousId="quiet"), "name": "Home"})
    yield w


def define_then_live_traffic(w: World) -> None:
    w.define()
    # Live traffic: counted by the consumer only; one late event received before live_from.
    w.deliver(order(20, AFTER, anonymousId="visitor"), view(AFTER, userId="ana"),
              order(3, JUST_BEFORE, userId="bob"), order(4, AFTER, anonymousId="bob-tablet"))


def assert_exact(w: World) -> None:
    for person in PEOPLE:
        assert w.values(*person) == w.expected(*person), person


def test_a_trait_defined_after_the_data_gets_the_exact_values_of_all_the_history(world):
    define_then_live_traffic(world)
    assert world.values("anonymous_id", "visitor") == {"ltv": 20, "pricing_views": 0}  # live part only
    run_to_end(backfill())
    assert_exact(world)
    assert world.values("user_id", "bob") == {"ltv": 108.75, "pricing_views": 1}
    assert world.values("user_id", "ana") == {"ltv": 12.5, "pricing_views": 2}
    specs = [i for i in scan_items(SEGMENTS) if i["pk"]["S"].startswith("spec#")]
    assert {i["backfill"]["S"] for i in specs} == {"done"}
    (status,) = backfill_status(world.ddb, SEGMENTS)
    assert status.status == "done" and status.progress == 1.0 and status.segments_done == 4
    # Profiles written: ana, bob and visitor (quiet had nothing to add); a profile whose
    # partitions come in different pages is written once per page.
    assert 3 <= status.written <= 6 and status.finished_at is not None


def test_a_profile_with_nothing_selected_before_is_not_written(world):
    world.define()
    before = {i["pk"]["S"]: i for i in scan_items(IDENTITY)}
    run_to_end(backfill())
    after = {i["pk"]["S"]: i for i in scan_items(IDENTITY)}
    assert after["ident#anonymous_id:quiet"] == before["ident#anonymous_id:quiet"]


def test_events_of_the_consumer_during_the_backfill_are_counted_once(world, monkeypatch):
    define_then_live_traffic(world)
    job = backfill(workers=1)
    real = DynamoBackfill._fill
    calls = {"n": 0}

    def live_event_then_fill(self: DynamoBackfill, ddb: Any, key: str, item: dict[str, Any], *rest: Any) -> None:
        calls["n"] += 1
        if calls["n"] in (1, 3):  # the consumer writes the profile between the backfill's read and write
            world.deliver(order(1000, AFTER, userId="ana"), order(2000, AFTER, anonymousId="visitor"))
        real(self, ddb, key, item, *rest)

    monkeypatch.setattr(DynamoBackfill, "_fill", live_event_then_fill)
    outcome = job.run(deadline=float("inf"))
    assert outcome.finished and outcome.conflicts >= 1
    assert_exact(world)


def test_a_backfill_stopped_midway_resumes_to_the_same_result(world):
    define_then_live_traffic(world)
    outcomes = run_in_slices(lambda: backfill_status(world.ddb, SEGMENTS)[0])
    assert outcomes[0] == "stopped" and outcomes[-1] == "done" and len(outcomes) > 2
    assert_exact(world)


def test_a_second_run_changes_nothing(world):
    define_then_live_traffic(world)
    run_to_end(backfill())
    before = scan_items(IDENTITY)
    assert backfill().run(deadline=float("inf")).state == "idle"
    # Even started again from scratch (checkpoint gone, specs pending), every profile is filled already.
    for item in scan_items(SEGMENTS):
        if item["pk"]["S"].startswith("backfill#"):
            world.ddb.delete_item(TableName=SEGMENTS, Key={"pk": item["pk"]})
        elif item["pk"]["S"].startswith("spec#"):
            world.ddb.update_item(TableName=SEGMENTS, Key={"pk": item["pk"]}, UpdateExpression="SET backfill = :p",
                                  ExpressionAttributeValues={":p": {"S": "pending"}})
    run_to_end(backfill())
    assert scan_items(IDENTITY) == before


def test_a_profile_merged_away_during_the_backfill_is_filled_once(world, monkeypatch):
    """Two visitors, filled one at a time, merge between the two fills (a login on both devices)."""
    world.deliver(order(2, BEFORE, anonymousId="cat-phone"), order(4, BEFORE, anonymousId="cat-laptop"))
    world.define()
    job = backfill(segments=1, workers=1)
    real = DynamoBackfill._fill
    state = {"merged": False}

    def fill_then_merge(self: DynamoBackfill, ddb: Any, key: str, item: dict[str, Any], *rest: Any) -> None:
        real(self, ddb, key, item, *rest)
        if key.startswith("ident#anonymous_id:cat-") and not state["merged"]:
            state["merged"] = True
            world.deliver(order(8, AFTER, userId="cat", anonymousId="cat-phone"),
                          order(16, AFTER, userId="cat", anonymousId="cat-laptop"))

    monkeypatch.setattr(DynamoBackfill, "_fill", fill_then_merge)
    run_to_end(job)
    assert world.values("user_id", "cat") == world.expected("user_id", "cat") == {"ltv": 30, "pricing_views": 0}



def test_a_backfill_resumed_after_live_events_does_not_count_history_twice(world):
    """A profile filled, then written by the consumer, then met again by a later invocation
    (its identifier item, in another segment): the fill must still be known."""
    define_then_live_traffic(world)
    run_to_end(backfill())
    world.deliver(order(1, AFTER, userId="bob"))
    for item in scan_items(SEGMENTS):  # start over, as a new run would
        if item["pk"]["S"].startswith("backfill#"):
            world.ddb.delete_item(TableName=SEGMENTS, Key={"pk": item["pk"]})
        elif item["pk"]["S"].startswith("spec#"):
            world.ddb.update_item(TableName=SEGMENTS, Key={"pk": item["pk"]}, UpdateExpression="SET backfill = :p",
                                  ExpressionAttributeValues={":p": {"S": "pending"}})
    run_to_end(backfill())
    assert_exact(world)



def test_a_merge_of_two_filled_profiles_keeps_both_fills_known(world):
    world.deliver(order(2, BEFORE, anonymousId="dan-phone"), order(4, BEFORE, anonymousId="dan-laptop"))
    define_then_live_traffic(world)
    world.deliver(order(1, AFTER, anonymousId="dan-phone"), order(1, AFTER, anonymousId="dan-laptop"))
    run_to_end(backfill())
    world.deliver(order(8, AFTER, userId="dan", anonymousId="dan-phone"),
                  order(16, AFTER, userId="dan", anonymousId="dan-laptop"))
    for item in scan_items(SEGMENTS):
        if item["pk"]["S"].startswith("backfill#"):
            world.ddb.delete_item(TableName=SEGMENTS, Key={"pk": item["pk"]})
        elif item["pk"]["S"].startswith("spec#"):
            world.ddb.update_item(TableName=SEGMENTS, Key={"pk": item["pk"]}, UpdateExpression="SET backfill = :p",
                                  ExpressionAttributeValues={":p": {"S": "pending"}})
    run_to_end(backfill())
    assert world.values("user_id", "dan") == world.expected("user_id", "dan")


def test_a_spec_registered_again_during_the_backfill_stops_the_run(world, monkeypatch):
    world.define()
    job = backfill(workers=1, gen_check_seconds=0)
    real = DynamoBackfill._fill
    spec_key = {"pk": {"S": "spec#" + SPENT.aggregate_id()}}

    def fill_then_reregister(self: DynamoBackfill, *args: Any) -> None:
        real(self, *args)
        world.ddb.update_item(TableName=SEGMENTS, Key=spec_key, UpdateExpression="SET gen = :g",
                              ExpressionAttributeValues={":g": {"S": "2026-11-28T11:00:00.000Z"}})

    monkeypatch.setattr(DynamoBackfill, "_fill", fill_then_reregister)
    outcome = job.run(deadline=float("inf"))
    assert outcome.state == "superseded" and not outcome.finished
    assert backfill_status(world.ddb, SEGMENTS)[0].status == "superseded"


def test_nothing_runs_before_live_from_has_settled(world):
    world.define()
    early = backfill(now=lambda: REGISTERED + timedelta(minutes=5))
    assert early.run(deadline=float("inf")).state == "waiting"
    assert backfill_status(world.ddb, SEGMENTS) == []


def test_a_second_invocation_while_another_holds_the_lease_is_busy(world):
    world.define()
    ticks = itertools.count()
    clock = lambda: float(next(ticks))  # noqa: E731
    assert backfill(clock=clock, workers=1).run(deadline=clock() + 3).state == "stopped"
    (run,) = [i for i in scan_items(SEGMENTS) if i["pk"]["S"].startswith("backfill#")]
    world.ddb.update_item(TableName=SEGMENTS, Key={"pk": run["pk"]}, UpdateExpression="SET lease_until = :u",
                          ExpressionAttributeValues={":u": {"S": "2026-11-28T12:10:00.000Z"}})
    assert backfill().run(deadline=float("inf")).state == "busy"
    assert backfill(now=lambda: NOW + timedelta(minutes=11)).run(deadline=float("inf")).state == "done"


# --- account activity (B2B) ----------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audiences"
HIGH_INTENT = AudienceDefinition.model_validate_json((EXAMPLES / "high-intent-accounts.json").read_text())
MEMBERS = ("ann", "ben", "cy")


def feature_used(received: str, **ids: Any) -> dict[str, Any]:
    n = next(_messages)
    return {"type": "track", "event": "Feature Used", "messageId": f"m{n}", "timestamp": received,
            "originalTimestamp": received, "receivedAt": received, "properties": {"feature": "reports"}, **ids}


def joins(received: str, **ids: Any) -> dict[str, Any]:
    n = next(_messages)
    return {"type": "group", "groupId": "acme", "messageId": f"m{n}", "timestamp": received,
            "originalTimestamp": received, "receivedAt": received, "traits": {"name": "Acme"}, **ids}


@pytest.fixture
def accounts(world: World) -> World:
    """Three members of one account active before any audience reads it: ann and ben in
    profile items, cy a home profile (an anonymous visitor's, living in its identifier item,
    who logged in: two history partitions)."""
    world.deliver(joins(BEFORE, userId="ann"), feature_used(BEFORE, userId="ann"))
    world.deliver(joins(BEFORE, userId="ben"), feature_used(BEFORE, userId="ben"))
    world.deliver(feature_used(BEFORE, anonymousId="cy-laptop"))
    world.deliver(joins(BEFORE, userId="cy", anonymousId="cy-laptop"))
    return world


def define_high_intent(w: World) -> None:
    """The high-intent sample audience, created after the data (as the admin API does)."""
    w.ddb.put_item(TableName=SEGMENTS, Item={"pk": {"S": f"audience#{HIGH_INTENT.id}"},
                                             "definition": {"S": HIGH_INTENT.model_dump_json(by_alias=True)},
                                             "version": {"N": "1"}})
    SpecRegistry(w.ddb, SEGMENTS, cache_seconds=60, now=lambda: REGISTERED).sync([HIGH_INTENT])


def account_activity_of(group_id: str) -> tuple[dict[str, Any], dict[str, dict[str, list[str]]]]:
    """The account item and its activity (spec id -> bucket -> member tags)."""
    item = boto3.client("dynamodb").get_item(TableName=IDENTITY, Key={"pk": {"S": account_key(group_id)}})["Item"]
    return item, buckets_of(activity_from_json(item.get("act", {}).get("S")))


def counted_members(w: World) -> int:
    """What the evaluator reads: the account's distinct active members in the spec's window at NOW."""
    [active] = CatalogStore(w.ddb, SEGMENTS, cache_seconds=0).current().activity_specs.values()
    return member_count(active.spec, account_activity_of("acme")[1], NOW)


def expected_tags(w: World) -> set[str]:
    return {member_tag(w.profile_of("user_id", user)) for user in MEMBERS}


def reset_runs(w: World) -> None:
    """Start over as a new run would: checkpoints gone, every spec pending again."""
    for item in scan_items(SEGMENTS):
        if item["pk"]["S"].startswith("backfill#"):
            w.ddb.delete_item(TableName=SEGMENTS, Key={"pk": item["pk"]})
        elif item["pk"]["S"].startswith(("spec#", "actspec#")):
            w.ddb.update_item(TableName=SEGMENTS, Key={"pk": item["pk"]}, UpdateExpression="SET backfill = :p",
                              ExpressionAttributeValues={":p": {"S": "pending"}})


def test_an_account_activity_audience_defined_after_the_data_counts_the_members_of_the_history(accounts):
    define_high_intent(accounts)
    assert counted_members(accounts) == 0  # the consumer keeps the activity from live_from on only
    run_to_end(backfill())
    item, activity = account_activity_of("acme")
    [(spec_id, buckets)] = activity.items()
    assert buckets == {"2026-11-27": sorted(expected_tags(accounts))}
    assert counted_members(accounts) == 3
    statuses = {i["pk"]["S"].partition("#")[0]: i["backfill"]["S"] for i in scan_items(SEGMENTS)
                if i["pk"]["S"].startswith(("spec#", "actspec#"))}
    assert statuses == {"spec": "done", "actspec": "done"}  # one run covered both kinds
    (status,) = backfill_status(accounts.ddb, SEGMENTS)
    assert f"actspec#{spec_id}" in status.specs and len(status.specs) == 2

    # Again: nothing pending; started over from scratch, the union adds nothing and nothing is written.
    assert backfill().run(deadline=float("inf")).state == "idle"
    reset_runs(accounts)
    again = backfill().run(deadline=float("inf"))
    assert again.state == "done" and again.accounts == 0 and again.written == 0
    assert account_activity_of("acme")[0] == item


def test_live_activity_and_the_history_make_one_count(accounts):
    define_high_intent(accounts)
    # After live_from the consumer adds ann's new day and a fourth member; the backfill the rest.
    accounts.deliver(joins(AFTER, userId="dee"), feature_used(AFTER, userId="dee"), feature_used(AFTER, userId="ann"))
    assert counted_members(accounts) == 2
    run_to_end(backfill())
    _, activity = account_activity_of("acme")
    [buckets] = activity.values()
    ann, dee = member_tag(accounts.profile_of("user_id", "ann")), member_tag(accounts.profile_of("user_id", "dee"))
    assert buckets == {"2026-11-27": sorted(expected_tags(accounts)), "2026-11-28": sorted({ann, dee})}
    assert counted_members(accounts) == 4


def test_an_account_activity_backfill_stopped_midway_resumes_to_the_same_result(accounts):
    define_high_intent(accounts)
    outcomes = run_in_slices()
    assert outcomes[0] == "stopped" and outcomes[-1] == "done" and len(outcomes) > 2
    [buckets] = account_activity_of("acme")[1].values()
    assert buckets == {"2026-11-27": sorted(expected_tags(accounts))}
    assert counted_members(accounts) == 3


def test_a_run_without_activity_specs_reads_no_account(world, monkeypatch):
    define_then_live_traffic(world)
    monkeypatch.setattr(DynamoBackfill, "_add_activity", lambda *args: pytest.fail("accounts read"))
    run_to_end(backfill())
    assert_exact(world)
