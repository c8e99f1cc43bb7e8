"""Account activity on moto, end to end: the unification stage keeps the distinct active
members on the account item, the segment evaluator (the deployed handler, fed by the
identity table's filtered stream) brings the account's members into the high-intent
sample, and the scheduled re-evaluation takes them out when the activity leaves the window."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from cdp import resources
from cdp.aws.identity_graph import DynamoIdentityGraph, account_key
from cdp.aws.membership_store import MembershipStore
from cdp.aws.profile_store import ProfileRecords
from cdp.aws.scheduled_reevaluation import ScheduledReevaluation
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.segmentation.account_activity import member_tag
from cdp.segmentation.catalog import CatalogStore, SpecRegistry
from cdp.segmentation.definitions import AudienceDefinition
from cdp.unification import UnificationStage
from tests.conftest import load_handler
from tests.integration.test_segment_evaluator import IdentityStream, audience_events

IDENTITY = resources.IDENTITY_TABLE.local_name
SEGMENTS = resources.SEGMENTS_TABLE.local_name
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "audiences" / "high-intent-accounts.json"
HIGH_INTENT = AudienceDefinition.model_validate_json(SAMPLE.read_text())


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def define(definition: AudienceDefinition) -> None:
    """Save the definition and register its specs as the admin API does, live since long ago."""
    ddb = boto3.client("dynamodb")
    ddb.put_item(TableName=SEGMENTS, Item={"pk": {"S": f"audience#{definition.id}"},
                                           "definition": {"S": definition.model_dump_json(by_alias=True)},
                                           "version": {"N": "1"}})
    SpecRegistry(ddb, SEGMENTS, cache_seconds=0, now=lambda: datetime(2026, 1, 1, tzinfo=UTC)).sync([definition])


def event(n: int, user: str, at: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return "src_test", {"messageId": f"m{n}", "userId": user, "timestamp": at, "receivedAt": at, **fields}


def feature_used(n: int, user: str, at: str) -> tuple[str, dict[str, Any]]:
    return event(n, user, at, type="track", event="Feature Used", properties={"feature": "reports"})


def joins(n: int, user: str, at: str) -> tuple[str, dict[str, Any]]:
    return event(n, user, at, type="group", groupId="g1", traits={"name": "Globex"})


@pytest.fixture
def setup(aws: None, lambda_context: Any) -> Any:
    define(HIGH_INTENT)
    ddb = boto3.client("dynamodb")
    clock = Clock(datetime(2026, 11, 28, 12, tzinfo=UTC))
    graph = DynamoIdentityGraph(ddb, IDENTITY, IdentityConfig(), records_table=resources.EVENTS_TABLE.local_name,
                                sleep=lambda s: None)
    catalog = CatalogStore(ddb, SEGMENTS, cache_seconds=0).current
    stage = UnificationStage(graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), IdentityConfig(),
                             catalog, now=clock)
    handler = load_handler("segment_evaluator")
    handler.dependencies().now = clock
    stream = IdentityStream()

    def settle() -> None:  # deliver until quiet: touched members come back through the stream
        for _ in range(6):
            records = stream.event()
            if not records["Records"]:
                return
            assert handler.handler(records, lambda_context) == {"batchItemFailures": []}
        raise AssertionError("the identity stream did not settle")

    return stage, graph, clock, settle


def members(graph: DynamoIdentityGraph) -> dict[str, bool]:
    store = MembershipStore(boto3.client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)
    found: dict[str, bool] = {}
    for user in ("u1", "u2", "u3"):
        profile_id = graph.lookup_identifier(Identifier("user_id", user))
        assert profile_id is not None
        stored = store.of_profile(profile_id).get(HIGH_INTENT.id)
        found[user] = stored.member if stored else False
    return found


def account_item() -> dict[str, Any]:
    return boto3.client("dynamodb").get_item(TableName=IDENTITY, Key={"pk": {"S": account_key("g1")}})["Item"]


def test_three_active_members_of_one_account_enter_and_leave_when_the_activity_leaves_the_week(setup) -> None:
    stage, graph, clock, settle = setup
    day1 = "2026-11-28T10:00:00.000Z"
    stage.store([joins(1, "u1", day1), joins(2, "u2", day1), joins(3, "u3", day1),
                 feature_used(4, "u1", day1), feature_used(5, "u2", day1)])
    settle()
    assert members(graph) == {"u1": False, "u2": False, "u3": False}  # two active members are not three

    stage.store([feature_used(6, "u3", "2026-11-28T11:00:00.000Z")])
    settle()
    assert members(graph) == {"u1": True, "u2": True, "u3": True}  # the third: the account's members enter
    ids = [graph.lookup_identifier(Identifier("user_id", u)) for u in ("u1", "u2", "u3")]
    stored = json.loads(account_item()["act"]["S"])
    assert [set(state["b"]["2026-11-28"]) for state in stored.values()] == [{member_tag(str(p)) for p in ids}]

    # u1 is active again two days later: its own week runs on, the account's does not.
    clock.at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    version = account_item()["version"]["N"]
    stage.store([feature_used(7, "u1", "2026-11-30T08:00:00.000Z"), feature_used(8, "u1", "2026-11-30T08:30:00.000Z")])
    assert int(account_item()["version"]["N"]) == int(version) + 1  # one write for the batch's two events
    stage.store([feature_used(7, "u1", "2026-11-30T08:00:00.000Z")])  # redelivered: nothing to add
    assert account_item()["version"]["N"] == str(int(version) + 1)
    settle()
    assert members(graph) == {"u1": True, "u2": True, "u3": True}

    # 2026-11-28 leaves the 7-day window at 2026-12-05 00:00: the hourly schedule's next run.
    clock.at = datetime(2026, 12, 5, 1, 0, 30, tzinfo=UTC)
    ddb = boto3.client("dynamodb")
    ddb.put_item(TableName=SEGMENTS, Item={"pk": {"S": "schedule#due"}, "hour": {"S": "2026-12-04T23"}})
    run = ScheduledReevaluation(ddb, resources.MEMBERSHIPS_TABLE.local_name, IDENTITY, SEGMENTS, now=clock).run()
    assert run.touched == 3
    settle()
    # u1 still used a feature this week, but is the account's only active member now.
    assert members(graph) == {"u1": False, "u2": False, "u3": False}
    assert sorted(e["event"] for e in audience_events()) == ["Audience Entered"] * 3 + ["Audience Exited"] * 3


def test_the_backfill_hook_adds_the_history_before_live_from_once(setup) -> None:
    from cdp.identity.profile_state import ProfileState
    from cdp.segmentation.account_activity import history_additions

    stage, graph, clock, _ = setup
    stage.store([joins(1, "u1", "2026-11-28T10:00:00.000Z")])  # the account exists; no activity yet
    catalog = CatalogStore(boto3.client("dynamodb"), SEGMENTS, cache_seconds=0).current()
    [(spec_id, active)] = catalog.activity_specs.items()
    # As the backfill would: a profile's history received before live_from (here moved later).
    late = {spec_id: type(active)(active.spec, active.gen, "2026-11-28T12:00:00.000Z")}
    history = [feature_used(2, "u1", "2026-11-27T09:00:00.000Z")[1],
               feature_used(3, "u1", "2026-11-28T13:00:00.000Z")[1]]
    profile_id = graph.lookup_identifier(Identifier("user_id", "u1"))
    assert profile_id is not None
    additions = history_additions(profile_id, {"g1"}, late, history)
    assert additions == {"g1": {spec_id: {"2026-11-27": {member_tag(profile_id)}}}}
    for _ in range(2):  # run twice: the union adds nothing the second time, and writes nothing
        graph.begin_batch()
        graph.apply_account_state("g1", ProfileState(), additions["g1"], {spec_id: active.spec}, clock())
        assert json.loads(account_item()["act"]["S"])[spec_id]["b"] == {"2026-11-27": [member_tag(profile_id)]}
        assert account_item()["version"]["N"] == "2"


def test_an_account_item_that_would_grow_too_large_keeps_its_activity_and_the_batch_succeeds(setup,
                                                                                             monkeypatch) -> None:
    from cdp.segmentation import account_activity

    stage, *_ = setup
    stage.store([joins(1, "u1", "2026-11-28T10:00:00.000Z"), joins(2, "u2", "2026-11-28T10:00:00.000Z"),
                 feature_used(3, "u1", "2026-11-28T10:00:00.000Z")])
    before = account_item()
    monkeypatch.setattr(account_activity, "MAX_ACTIVITY_BYTES", len(before["act"]["S"]) + 5)
    stage.store([feature_used(4, "u2", "2026-11-28T11:00:00.000Z")])  # one more tag would pass the limit
    assert account_item() == before
