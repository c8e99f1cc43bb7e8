"""The unification stage on moto: identity scenarios, profile states, merge log, accounts, replays."""

from __future__ import annotations

import itertools
import json
from typing import Any

import boto3
import pytest

from cdp import resources
from cdp.aws.identity_graph import DynamoIdentityGraph, GraphConflict
from cdp.aws.profile_store import ProfileRecords
from cdp.identity.config import IdentifierType, IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.unification import UnificationStage
from tests.integration.conftest import scan

CONFIG = IdentityConfig()
_ids = itertools.count(1)


def event(kind: str, day: int, **fields: Any) -> dict[str, Any]:
    n = next(_ids)
    base = {"type": kind, "messageId": f"m{n:04d}", "timestamp": f"2026-03-{day:02d}T10:00:00.000Z",
            "receivedAt": f"2026-03-{day:02d}T10:00:01.000Z", "context": {"locale": f"l{n}"}}
    base.update(fields)
    return base


def make_stage() -> tuple[UnificationStage, DynamoIdentityGraph]:
    ddb = boto3.client("dynamodb")
    graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, CONFIG,
                                records_table=resources.EVENTS_TABLE.local_name, sleep=lambda s: None)
    records = ProfileRecords(ddb, resources.EVENTS_TABLE.local_name)
    return UnificationStage(graph, records, CONFIG), graph


def run(stage: UnificationStage, *batches: list[dict[str, Any]]) -> None:
    for batch in batches:
        stage.store([("src_test", e) for e in batch])


def profile_of(graph: DynamoIdentityGraph, type_name: str, value: str) -> str:
    found = graph.lookup_identifier(Identifier(type_name, value))
    assert found is not None, (type_name, value)
    return found


def traits(graph: DynamoIdentityGraph, profile_id: str) -> dict[str, Any]:
    state = graph.state_of(profile_id)
    assert state is not None
    return {name: t.value for name, t in state.traits.items()}


def identity_items() -> list[dict[str, Any]]:
    return sorted(scan(resources.IDENTITY_TABLE.local_name), key=lambda i: i["pk"])


def records(prefix: str) -> list[dict[str, Any]]:
    return [i for i in scan(resources.EVENTS_TABLE.local_name) if i["pk"].startswith(prefix)]


def test_laptop_signup_mobile_and_crm_import_are_one_profile(aws):
    stage, graph = make_stage()
    laptop = [event("page", 1, anonymousId="laptop-1", name="Home"),
              event("track", 1, anonymousId="laptop-1", event="Viewed Pricing")]
    signup = [event("identify", 2, anonymousId="laptop-1", userId="ana-1",
                    traits={"email": "Ana@Example.com", "name": "Ana", "plan": "free"})]
    mobile = [event("screen", 3, anonymousId="phone-1", userId="ana-1", name="Feed",
                    context={"device": {"id": "dev-9", "type": "ios"}})]
    crm = [event("identify", 4, anonymousId="crm-row-7", traits={"email": "ana@example.com", "plan": "pro"})]
    run(stage, laptop, signup, mobile, crm)

    profile = profile_of(graph, "user_id", "ana-1")
    for type_name, value in [("anonymous_id", "laptop-1"), ("anonymous_id", "phone-1"),
                             ("email", "ana@example.com"), ("device_id", "dev-9"), ("anonymous_id", "crm-row-7")]:
        assert profile_of(graph, type_name, value) == profile
    assert graph.identifiers_of(profile) == {
        Identifier("user_id", "ana-1"), Identifier("email", "ana@example.com"), Identifier("device_id", "dev-9"),
        Identifier("anonymous_id", "laptop-1"), Identifier("anonymous_id", "phone-1"),
        Identifier("anonymous_id", "crm-row-7")}
    assert traits(graph, profile) == {"email": "ana@example.com", "name": "Ana", "plan": "pro"}
    state = graph.state_of(profile)
    assert state is not None
    assert (state.first_seen, state.last_seen_day) == ("2026-03-01T10:00:00.000Z", "2026-03-04")


def test_later_trait_wins_whatever_the_arrival_order(aws):
    stage, graph = make_stage()
    old = event("identify", 1, userId="u-order", traits={"plan": "free", "city": "Porto"})
    new = event("identify", 9, userId="u-order", traits={"plan": "pro"})
    run(stage, [new], [old])
    assert traits(graph, profile_of(graph, "user_id", "u-order")) == {"plan": "pro", "city": "Porto"}


def test_one_event_merges_three_profiles_and_logs_each_merge(aws):
    stage, graph = make_stage()
    run(stage, [event("page", 1, anonymousId="a-3", name="Home")],
        [event("identify", 2, anonymousId="crm-3", traits={"email": "tri@example.com", "tier": "gold"})],
        [event("identify", 3, anonymousId="app-3", traits={"phone": "+33612345678", "city": "Nice"})])
    before = {profile_of(graph, "anonymous_id", a) for a in ("a-3", "crm-3", "app-3")}
    assert len(before) == 3
    joining = event("identify", 4, anonymousId="a-3", userId="tri",
                    traits={"email": "tri@example.com", "phone": "+33 6 12 34 56 78"})
    run(stage, [joining])

    survivor = profile_of(graph, "user_id", "tri")
    assert {profile_of(graph, "anonymous_id", a) for a in ("a-3", "crm-3", "app-3")} == {survivor}
    assert traits(graph, survivor)["tier"] == "gold" and traits(graph, survivor)["city"] == "Nice"
    merged = before - {survivor}
    log = records(f"p#{survivor}")
    assert {r["merged"] for r in log if r["sk"].startswith("merge#")} == merged
    for entry in (r for r in log if r["sk"].startswith("merge#")):
        assert entry["message_id"] == joining["messageId"] and entry["identifiers"]
    # The merged ids still resolve to the survivor, and it lists them.
    for old_id in merged:
        assert graph.profile_of(old_id) == survivor
    holder = next(i for i in identity_items() if i["pk"] == f"prof#{survivor}"
                  or (i.get("solo") and i["profile_id"] == survivor))  # a profile item, or its home
    assert set(holder["merged_from"]) == merged


def test_two_people_on_one_laptop_stay_two_profiles_and_the_blocked_merge_is_recorded(aws):
    stage, graph = make_stage()
    run(stage, [event("identify", 1, anonymousId="family-pc", userId="mum", traits={"name": "Mum"})],
        [event("identify", 2, anonymousId="family-pc", userId="son", traits={"name": "Son"})])
    mum, son = profile_of(graph, "user_id", "mum"), profile_of(graph, "user_id", "son")
    assert mum != son
    assert profile_of(graph, "anonymous_id", "family-pc") == mum  # the device stays with the first person
    assert traits(graph, mum) == {"name": "Mum"} and traits(graph, son) == {"name": "Son"}
    blocked = [r for r in records(f"p#{son}") if r["sk"].startswith("blocked#")]
    assert len(blocked) == 1
    assert blocked[0]["dropped"] == ["anonymous_id:family-pc"] and blocked[0]["profiles"] == [mum]


def test_alias_links_the_previous_anonymous_id_to_the_user(aws):
    stage, graph = make_stage()
    run(stage, [event("track", 1, anonymousId="visitor-5", event="Viewed")],
        [event("alias", 2, previousId="visitor-5", userId="user-5")])
    assert profile_of(graph, "user_id", "user-5") == profile_of(graph, "anonymous_id", "visitor-5")


def test_group_creates_the_account_and_links_its_members(aws):
    stage, graph = make_stage()
    run(stage, [event("group", 1, userId="bo", groupId="acme", traits={"name": "Acme", "plan": "trial"}),
                event("group", 2, userId="cy", groupId="acme", traits={"plan": "enterprise"})])
    account = graph.account_state("acme")
    assert account is not None
    assert {k: v.value for k, v in account.traits.items()} == {"name": "Acme", "plan": "enterprise"}
    members = {r["profile_id"] for r in records("g#acme")}
    assert members == {profile_of(graph, "user_id", "bo"), profile_of(graph, "user_id", "cy")}
    bo = profile_of(graph, "user_id", "bo")
    assert [r["group_id"] for r in records(f"p#{bo}")] == ["acme"]
    assert traits(graph, bo) == {}  # group traits are the account's, not the user's


def test_replaying_batches_writes_nothing_and_changes_nothing(aws):
    stage, _ = make_stage()
    batches = [[event("page", 1, anonymousId="r-1", name="Home"),
                event("identify", 2, anonymousId="r-1", userId="r", traits={"email": "r@example.com"})],
               [event("identify", 3, anonymousId="r-2", traits={"email": "r@example.com", "vip": True}),
                event("group", 3, userId="r", groupId="g-r", traits={"size": 5})]]
    run(stage, *batches)
    identity, other = identity_items(), sorted(scan(resources.EVENTS_TABLE.local_name),
                                               key=lambda i: (i["pk"], i["sk"]))
    writes: list[str] = []
    ddb = boto3.client("dynamodb")
    ddb.meta.events.register("before-call.dynamodb.*", lambda model, **_: writes.append(model.name))
    replay_graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, CONFIG,
                                       records_table=resources.EVENTS_TABLE.local_name)
    replay = UnificationStage(replay_graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), CONFIG)
    run(replay, *batches)
    assert identity_items() == identity
    assert sorted(scan(resources.EVENTS_TABLE.local_name), key=lambda i: (i["pk"], i["sk"])) == other
    # Only reads, and the idempotent puts of account links.
    assert set(writes) <= {"BatchGetItem", "BatchWriteItem"}, writes


@pytest.mark.parametrize("value", ["null", "0", "anonymous", "00000000-0000-0000-0000-000000000000", " "])
def test_blocked_identifier_values_never_join_profiles(aws, value):
    stage, graph = make_stage()
    run(stage, [event("identify", 1, userId="x-1", anonymousId=value, traits={"email": "x1@example.com"})],
        [event("identify", 2, userId="x-2", anonymousId=value, traits={"email": "x2@example.com"})])
    assert profile_of(graph, "user_id", "x-1") != profile_of(graph, "user_id", "x-2")


def test_states_are_json_in_the_documented_layout(aws):
    stage, _ = make_stage()
    run(stage, [event("identify", 1, userId="lay", traits={"plan": "pro"})])
    prof = next(i for i in identity_items() if i["pk"].startswith("prof#"))
    assert prof["status"] == "live" and prof["ids"] == {"ident#user_id:lay"}
    state = json.loads(prof["state"])
    assert state["traits"]["plan"][0] == "pro" and state["first_seen"] == "2026-03-01T10:00:00.000Z"


def test_a_visitor_known_by_one_anonymous_id_lives_in_that_identifiers_item(aws):
    stage, graph = make_stage()
    run(stage, [event("page", 1, anonymousId="solo-1", name="Home"), event("track", 1, anonymousId="solo-1",
                                                                            event="Viewed")])
    items = identity_items()
    assert [i["pk"] for i in items] == ["ident#anonymous_id:solo-1"]
    (home,) = items
    assert home["solo"] is True and home["profile_id"].startswith("a.")
    profile = profile_of(graph, "anonymous_id", "solo-1")
    assert graph.profile_of(profile) == profile  # its id resolves without a profile item
    assert graph.state_of(profile) is not None

    # Signing up adds identifiers to the same item: still no profile item.
    run(stage, [event("identify", 2, anonymousId="solo-1", userId="solo-user", traits={"plan": "pro"})])
    assert profile_of(graph, "user_id", "solo-user") == profile
    assert not [i for i in identity_items() if i["pk"].startswith("prof#")]
    home = next(i for i in identity_items() if i["pk"] == "ident#anonymous_id:solo-1")
    assert home["ids"] == {"ident#anonymous_id:solo-1", "ident#user_id:solo-user"}
    assert graph.identifiers_of(profile) == {Identifier("anonymous_id", "solo-1"), Identifier("user_id", "solo-user")}
    assert traits(graph, profile) == {"plan": "pro"}


def test_a_home_profile_merged_into_a_user_keeps_a_resolvable_id(aws):
    stage, graph = make_stage()
    run(stage, [event("identify", 1, userId="known", anonymousId="desk", traits={"a": 1})],
        [event("page", 2, anonymousId="phone-x", name="Home")])
    home_profile = profile_of(graph, "anonymous_id", "phone-x")
    run(stage, [event("identify", 3, userId="known", anonymousId="phone-x")])
    user = profile_of(graph, "user_id", "known")
    assert profile_of(graph, "anonymous_id", "phone-x") == user != home_profile
    assert graph.profile_of(home_profile) == user  # through its former home, now a pointer
    pointer = next(i for i in identity_items() if i["pk"] == "ident#anonymous_id:phone-x")
    assert pointer["profile_id"] == user and "solo" not in pointer and "state" not in pointer
    assert not [i for i in identity_items() if i["pk"] == f"prof#{home_profile}"]


def test_a_home_profile_survives_a_merge_and_holds_the_merged_identifiers(aws):
    stage, graph = make_stage()
    run(stage, [event("page", 1, anonymousId="first-web", name="Home")],
        [event("identify", 2, anonymousId="crm-9", traits={"email": "nine@example.com", "tier": "gold"})],
        [event("identify", 3, anonymousId="first-web", traits={"email": "nine@example.com"})])
    survivor = profile_of(graph, "anonymous_id", "first-web")
    assert survivor.startswith("a.")  # the oldest profile survives: the first visit's home
    assert profile_of(graph, "anonymous_id", "crm-9") == survivor
    assert traits(graph, survivor)["tier"] == "gold"
    assert {i.key() for i in graph.identifiers_of(survivor)} == {
        "anonymous_id:first-web", "anonymous_id:crm-9", "email:nine@example.com"}


def test_a_batch_that_meets_a_concurrent_change_is_redone_event_by_event(aws, monkeypatch):
    """The one-commit path meets another consumer's write: the batch is resolved again, per event."""
    stage, graph = make_stage()
    run(stage, [event("identify", 1, userId="race", anonymousId="race-web", traits={"plan": "free"})])
    other, _ = make_stage()
    real_flush = graph.flush
    calls = {"n": 0}

    def flush_after_a_rival() -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # between this batch's reads and its commit, another consumer writes
            run(other, [event("identify", 2, userId="race", anonymousId="race-app", traits={"plan": "team"})])
        real_flush()

    monkeypatch.setattr(graph, "flush", flush_after_a_rival)
    run(stage, [event("identify", 3, userId="race", traits={"plan": "pro", "seats": 3}),
                event("page", 3, anonymousId="race-new", name="Home")])
    assert stage.stats.batch_conflicts == 1
    profile = profile_of(graph, "user_id", "race")
    assert profile_of(graph, "anonymous_id", "race-app") == profile  # the rival's change survived
    assert traits(graph, profile) == {"plan": "pro", "seats": 3}  # and ours was applied on top
    assert profile_of(graph, "anonymous_id", "race-new") != profile


def test_a_merge_too_big_for_one_transaction_fails_the_batch_and_changes_nothing(aws):
    _, graph = make_stage()
    many = IdentityConfig(types=(IdentifierType(name="user_id", priority=1, limit=1),
                                 IdentifierType(name="anonymous_id", priority=6, limit=500)))
    big = UnificationStage(graph, ProfileRecords(boto3.client("dynamodb"), resources.EVENTS_TABLE.local_name), many)
    run(big, [event("identify", 1, userId="big-a", anonymousId=f"big-a-{n}") for n in range(120)],
        [event("identify", 1, userId=None, anonymousId=f"big-b-{n}", context={
            "externalIds": [{"id": "shared-crm", "type": "crm_id", "collection": "users", "encoding": "none"}]})
         for n in range(120)])
    before = identity_items()
    with pytest.raises(GraphConflict):
        run(big, [event("identify", 2, userId="big-a", context={"externalIds": [
            {"id": "shared-crm", "type": "crm_id", "collection": "users", "encoding": "none"}]})])
    assert identity_items() == before
