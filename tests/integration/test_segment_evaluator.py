"""The segment evaluator on moto, driven by the identity table's real stream (filtered as deployed):
enter, exit, merges, nested audiences, accounts, duplicates and out-of-order records."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest

from cdp import resources
from cdp.aws.membership_store import InvalidCursor, MembershipStore
from cdp.aws.profile_store import membership_records
from cdp.identity.profile_state import ProfileState, TraitValue, state_to_json
from cdp.local.dynamodb_esm import dynamodb_streams_client, lambda_record, latest_stream_arn
from cdp.local.event_filtering import FilterCriteria
from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition
from cdp.segmentation.evaluate import dependencies
from tests.conftest import load_handler
from tests.integration.conftest import read_stream_as_lambda_event
from tests.segmentation_items import (
    audience,
    home_item,
    merged_home_item,
    profile_item,
)

IDENTITY = resources.IDENTITY_TABLE.local_name
PRO = audience("pro", {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"}, name="Pro plan")
VIP = audience("vip", {"type": "and", "conditions": [{"type": "audience", "audience": "pro"},
                                                      {"type": "trait", "trait": "vip", "op": "equals",
                                                       "value": True}]})
ENTERPRISE = audience("enterprise", {"type": "account", "trait": "tier", "op": "equals", "value": "enterprise"})


class IdentityStream:
    """Reads the identity table's stream from where it last stopped, as the mapping would deliver it."""

    def __init__(self) -> None:
        self.streams = dynamodb_streams_client()
        self.arn = latest_stream_arn(boto3.client("dynamodb"), IDENTITY)
        self.filters = FilterCriteria.from_patterns(resources.SEGMENT_EVALUATOR_ESM.filter_patterns)
        self.after: dict[str, str] = {}

    def event(self) -> dict[str, Any]:
        records = []
        for shard in self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]:
            shard_id = shard["ShardId"]
            kwargs: dict[str, Any] = {"StreamArn": self.arn, "ShardId": shard_id,
                                      "ShardIteratorType": "TRIM_HORIZON"}
            if shard_id in self.after:
                kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=self.after[shard_id])
            iterator = self.streams.get_shard_iterator(**kwargs)["ShardIterator"]
            for raw in self.streams.get_records(ShardIterator=iterator, Limit=1000)["Records"]:
                record = lambda_record(raw, stream_arn=self.arn)
                self.after[shard_id] = record["dynamodb"]["SequenceNumber"]
                if self.filters.matches(record):
                    records.append(record)
        return {"Records": records}


def define(*definitions: AudienceDefinition | ComputedTraitDefinition) -> None:
    ddb = boto3.client("dynamodb")
    table = resources.SEGMENTS_TABLE.local_name
    specs = {}
    for definition in definitions:
        kind = "audience" if isinstance(definition, AudienceDefinition) else "computed_trait"
        ddb.put_item(TableName=table, Item={"pk": {"S": f"{kind}#{definition.id}"},
                                            "definition": {"S": definition.model_dump_json(by_alias=True)},
                                            "version": {"N": "1"}})
        specs.update(dependencies(definition).aggregates)
    for spec_id, spec in specs.items():
        ddb.put_item(TableName=table, Item={"pk": {"S": f"spec#{spec_id}"},
                                            "spec": {"S": spec.model_dump_json(exclude_none=True)},
                                            "gen": {"S": "g1"}, "live_from": {"S": "2000-01-01T00:00:00.000Z"}})


def put(item: dict[str, Any]) -> None:
    boto3.client("dynamodb").put_item(TableName=IDENTITY, Item=item)


def memberships(profile_id: str) -> dict[str, bool]:
    store = MembershipStore(boto3.client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)
    return {aid: m.member for aid, m in store.of_profile(profile_id).items()}


def audience_events() -> list[dict[str, Any]]:
    found = []
    for record in read_stream_as_lambda_event()["Records"]:
        envelope = json.loads(base64.b64decode(record["kinesis"]["data"]))
        if envelope["source_id"] == "cdp-audiences":
            found.append(envelope["event"])
    return found


@pytest.fixture
def evaluator(aws: None) -> Any:
    return load_handler("segment_evaluator")


@pytest.fixture
def stream(aws: None) -> IdentityStream:
    return IdentityStream()


def run(evaluator: Any, stream: IdentityStream, lambda_context: Any) -> dict[str, Any]:
    event = stream.event()
    assert evaluator.handler(event, lambda_context) == {"batchItemFailures": []}
    return event


def test_profile_enters_on_the_change_that_qualifies_and_exits_on_the_trait_change(
        evaluator, stream, lambda_context) -> None:
    define(PRO)
    put(profile_item("p1", version=1, traits={"plan": "free"}))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {}
    put(profile_item("p1", version=2, traits={"plan": "pro"}))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {"pro": True}
    put(profile_item("p1", version=3, traits={"plan": "free"}))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {"pro": False}

    entered, exited = audience_events()
    assert entered["event"] == "Audience Entered" and entered["userId"] == "u1"
    assert entered["properties"] == {"audience_id": "pro", "audience_name": "Pro plan", "audience_key": "pro",
                                     "pro": True}
    assert exited["event"] == "Audience Exited" and exited["properties"]["pro"] is False
    item = boto3.client("dynamodb").get_item(TableName=resources.MEMBERSHIPS_TABLE.local_name,
                                             Key={"profile_id": {"S": "p1"}, "audience_id": {"S": "pro"}})["Item"]
    assert item["entered_at"]["S"] == entered["timestamp"] and item["exited_at"]["S"] == exited["timestamp"]
    assert item["profile_version"] == {"N": "3"} and "member_of" not in item


def test_identifier_and_settings_items_are_filtered_out_before_the_function(evaluator, stream,
                                                                            lambda_context) -> None:
    define(PRO)
    put({"pk": {"S": "ident#user_id:u1"}, "profile_id": {"S": "p1"}})
    put({"pk": {"S": "config#identity"}, "config": {"S": "{}"}})
    assert stream.event() == {"Records": []}


def test_an_accounts_trait_change_re_evaluates_its_members_account_audiences(evaluator, stream,
                                                                              lambda_context) -> None:
    define(ENTERPRISE, PRO)
    ddb = boto3.client("dynamodb")

    def account(tier: str, version: int) -> None:
        state = state_to_json(ProfileState(traits={"tier": TraitValue(tier, f"2026-11-2{version}T00:00:00Z", "m")}))
        put({"pk": {"S": "acct#g1"}, "group_id": {"S": "g1"}, "version": {"N": str(version)}, "state": {"S": state}})

    def settle() -> None:  # deliver until the stream is quiet (touched members come back through it)
        for _ in range(5):
            event = stream.event()
            if not event["Records"]:
                return
            assert evaluator.handler(event, lambda_context) == {"batchItemFailures": []}

    account("startup", 1)
    for profile_id, user in (("p1", "u1"), ("p2", "u2")):
        for record in membership_records(profile_id, "g1"):
            ddb.put_item(TableName=resources.EVENTS_TABLE.local_name, Item=record)
        member = profile_item(profile_id, version=1, ids=(f"ident#user_id:{user}",))
        member["state"] = {"S": state_to_json(ProfileState(accounts=frozenset({"g1"})))}
        put(member)
    put(profile_item("p3", version=1, ids=("ident#user_id:u3",)))  # not a member
    settle()
    assert memberships("p1") == {} and memberships("p2") == {}

    account("enterprise", 2)  # only the account item changes
    settle()
    assert memberships("p1") == {"enterprise": True} and memberships("p2") == {"enterprise": True}
    assert memberships("p3") == {}
    account("enterprise", 3)  # a new version, same traits: nothing to do
    settle()
    account("startup", 4)
    settle()
    assert memberships("p1") == {"enterprise": False}
    assert [e["event"] for e in audience_events()] == ["Audience Entered"] * 2 + ["Audience Exited"] * 2


def test_merged_away_profiles_exit_their_audiences(evaluator, stream, lambda_context) -> None:
    define(PRO)
    put(profile_item("p1", version=1, traits={"plan": "pro"}))
    put(home_item("a1", "a.YTE", version=1, traits={"plan": "pro"}))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {"pro": True} and memberships("a.YTE") == {"pro": True}

    put(profile_item("p1", version=2, traits={"plan": "pro"}, status="merged", merged_into="p9"))
    put(merged_home_item("a1", "p9"))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {"pro": False} and memberships("a.YTE") == {"pro": False}
    # No exit events: the merged ids now resolve to the survivor, which did not exit; the
    # memberships table (and its stream, for activation) records the exits.
    events = audience_events()
    assert [(e["event"], e.get("userId") or e.get("anonymousId")) for e in events] == [
        ("Audience Entered", "u1"), ("Audience Entered", "a1")]
    assert evaluator.dependencies().stats.merged_exits == 2


def test_nested_audiences_settle_in_one_change(evaluator, stream, lambda_context) -> None:
    define(PRO, VIP)
    put(profile_item("p1", version=1, traits={"plan": "free", "vip": True}))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {}
    put(profile_item("p1", version=2, traits={"plan": "pro", "vip": True}))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {"pro": True, "vip": True}
    put(profile_item("p1", version=3, traits={"plan": "free", "vip": True}))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {"pro": False, "vip": False}


def test_account_conditions_read_the_profiles_accounts(evaluator, stream, lambda_context) -> None:
    define(ENTERPRISE)
    state = state_to_json(ProfileState(traits={"tier": TraitValue("enterprise", "2026-11-28T00:00:00Z", "m")}))
    put({"pk": {"S": "acct#g1"}, "version": {"N": "1"}, "state": {"S": state}})
    ddb = boto3.client("dynamodb")
    for record in membership_records("p1", "g1"):
        ddb.put_item(TableName=resources.EVENTS_TABLE.local_name, Item=record)
    member = profile_item("p1", version=1)
    member["state"] = {"S": state_to_json(ProfileState(accounts=frozenset({"g1"})))}  # as a group call leaves it
    put(member)
    put(profile_item("p2", version=1, ids=("ident#user_id:u2",)))
    run(evaluator, stream, lambda_context)
    assert memberships("p1") == {"enterprise": True}
    assert memberships("p2") == {}


def test_duplicate_and_out_of_order_records_converge(evaluator, stream, lambda_context) -> None:
    define(PRO)
    put(profile_item("p1", version=1, traits={"plan": "free"}))
    put(profile_item("p1", version=2, traits={"plan": "pro"}))
    put(profile_item("p1", version=3, traits={"plan": "free"}))
    event = stream.event()
    v1, v2, v3 = event["Records"]
    # Delivered twice over, the newest first, then everything again in order.
    for batch in ([v3], [v2, v2], [v1, v2, v3], [v2]):
        assert evaluator.handler({"Records": batch}, lambda_context) == {"batchItemFailures": []}
    assert memberships("p1") == {"pro": False}
    events = audience_events()
    # Entered at version 2 (emitted again by each redelivery of version 2, identical, so the
    # history keeps one), exited at version 3; the late version-2 record changes nothing.
    distinct = {json.dumps(e, sort_keys=True) for e in events}
    assert sorted(json.loads(e)["event"] for e in distinct) == ["Audience Entered", "Audience Exited"]
    assert [e["event"] for e in events][-1] == "Audience Exited"


def test_in_order_redelivery_emits_the_same_events_again(evaluator, stream, lambda_context) -> None:
    define(PRO)
    put(profile_item("p1", version=1, traits={"plan": "free"}))
    put(profile_item("p1", version=2, traits={"plan": "pro"}))
    event = stream.event()
    assert evaluator.handler(event, lambda_context) == {"batchItemFailures": []}
    assert evaluator.handler(event, lambda_context) == {"batchItemFailures": []}
    first, again = audience_events()
    assert first == again  # the history drops the second as a duplicate
    assert memberships("p1") == {"pro": True}


def test_failed_event_put_fails_the_record_and_the_retry_emits_the_event(
        evaluator, stream, lambda_context, monkeypatch) -> None:
    define(PRO)
    put(profile_item("p1", version=1, traits={"plan": "pro"}))
    event = stream.event()
    sink = evaluator.dependencies().events

    def unavailable(records: Any) -> None:
        raise RuntimeError("stream unavailable")

    monkeypatch.setattr(sink, "put_records", unavailable)
    with pytest.raises(RuntimeError, match="stream unavailable"):  # the invocation fails: Lambda retries the batch
        evaluator.handler(event, lambda_context)
    assert memberships("p1") == {"pro": True} and audience_events() == []
    monkeypatch.undo()
    assert evaluator.handler(event, lambda_context) == {"batchItemFailures": []}
    (entered,) = audience_events()
    assert entered["event"] == "Audience Entered"


def test_a_failed_record_fails_the_records_after_it_and_the_ones_before_are_stored(
        evaluator, stream, lambda_context, monkeypatch) -> None:
    define(PRO)
    for pid in ("p1", "p2", "p3"):
        put(profile_item(pid, version=1, traits={"plan": "pro"}, ids=(f"ident#user_id:{pid}",)))
    event = stream.event()
    import cdp.segmentation.evaluator as module

    real_decide = module.decide

    def failing_for_p2(change: Any, *args: Any, **kwargs: Any) -> Any:
        if change.profile_id == "p2":
            raise RuntimeError("accounts table unavailable")
        return real_decide(change, *args, **kwargs)

    monkeypatch.setattr(module, "decide", failing_for_p2)
    response = evaluator.handler(event, lambda_context)
    sequence = [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]
    # p3 is not evaluated: the mapping delivers it again after p2, in stream order.
    assert response == {"batchItemFailures": [{"itemIdentifier": sequence[1]}, {"itemIdentifier": sequence[2]}]}
    assert (memberships("p1"), memberships("p2"), memberships("p3")) == ({"pro": True}, {}, {})
    assert [e["userId"] for e in audience_events()] == ["p1"]
    monkeypatch.undo()
    assert evaluator.handler({"Records": event["Records"][1:]}, lambda_context) == {"batchItemFailures": []}
    assert memberships("p2") == memberships("p3") == {"pro": True}
    assert sorted(e["userId"] for e in audience_events()) == ["p1", "p2", "p3"]


def test_failed_membership_write_fails_the_invocation_and_the_retry_stores_and_emits(
        evaluator, stream, lambda_context, monkeypatch) -> None:
    define(PRO)
    put(profile_item("p1", version=1, traits={"plan": "pro"}))
    put(profile_item("p1", version=2, traits={"plan": "pro", "seats": 3}))
    event = stream.event()
    ddb = evaluator.dependencies().memberships._ddb

    def throttled(**request: Any) -> Any:
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(ddb, "batch_write_item", throttled)
    with pytest.raises(RuntimeError, match="Throughput"):  # Lambda retries the whole batch
        evaluator.handler(event, lambda_context)
    assert memberships("p1") == {} and audience_events() == []
    monkeypatch.undo()
    assert evaluator.handler(event, lambda_context) == {"batchItemFailures": []}
    assert memberships("p1") == {"pro": True}
    (entered,) = audience_events()
    assert entered["event"] == "Audience Entered"


def test_members_are_listed_page_by_page(aws: None) -> None:
    from cdp.segmentation.membership import Decision

    store = MembershipStore(boto3.client("dynamodb"), resources.MEMBERSHIPS_TABLE.local_name)
    for n in range(5):
        store.apply(f"p{n}", [Decision("pro", n != 2, "entered" if n != 2 else None, 1,
                                       "2026-11-28T12:00:00.000Z", "2026-11-29T00" if n == 2 else None)], {})
    page = store.members("pro", limit=2)
    seen = list(page.profile_ids)
    while page.cursor:
        page = store.members("pro", limit=2, cursor=page.cursor)
        seen.extend(page.profile_ids)
    assert sorted(seen) == ["p0", "p1", "p3", "p4"]
    assert store.audiences_of("p1") == ["pro"] and store.audiences_of("p2") == []
    with pytest.raises(InvalidCursor):
        store.members("other", cursor=store.members("pro", limit=1).cursor)
    item = boto3.client("dynamodb").get_item(TableName=resources.MEMBERSHIPS_TABLE.local_name,
                                             Key={"profile_id": {"S": "p2"}, "audience_id": {"S": "pro"}})["Item"]
    assert item["next_check"]["S"].startswith("2026-11-29T00#")


def test_profiles_written_by_the_unification_stage_are_evaluated(evaluator, stream, lambda_context) -> None:
    from cdp.aws.identity_graph import DynamoIdentityGraph
    from cdp.aws.profile_store import ProfileRecords
    from cdp.identity.config import IdentityConfig
    from cdp.unification import UnificationStage

    define(PRO)
    ddb = boto3.client("dynamodb")
    graph = DynamoIdentityGraph(ddb, IDENTITY, IdentityConfig(), records_table=resources.EVENTS_TABLE.local_name,
                                sleep=lambda s: None)
    stage = UnificationStage(graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), IdentityConfig())

    def identify(n: int, **fields: Any) -> None:
        stage.store([("src_test", {"type": "identify", "messageId": f"m{n}",
                                   "timestamp": f"2026-11-2{n}T10:00:00.000Z",
                                   "receivedAt": f"2026-11-2{n}T10:00:01.000Z", **fields})])

    identify(1, anonymousId="anon-1", traits={"plan": "free"})  # a home profile
    run(evaluator, stream, lambda_context)
    identify(2, anonymousId="anon-1", traits={"plan": "pro"})
    run(evaluator, stream, lambda_context)
    identify(3, anonymousId="anon-1", userId="user-1")  # gains a user id
    identify(4, userId="user-1", traits={"plan": "free"})
    run(evaluator, stream, lambda_context)
    entered, exited = audience_events()
    assert entered["anonymousId"] == "anon-1" and entered["event"] == "Audience Entered"
    assert exited["userId"] == "user-1" and exited["event"] == "Audience Exited"
