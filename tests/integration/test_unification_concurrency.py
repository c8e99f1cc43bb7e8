"""Parallel consumers running the unification stage converge to what sequential processing gives.

Each lane is one consumer instance (its own graph, cache and stage, as separate Lambda
invocations are) processing its share of shuffled, duplicated events in batches,
against moto run as a server that executes one request at a time (DynamoDB is atomic
per request; in-process moto is not).
"""

from __future__ import annotations

import random
import threading
import uuid
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp import resources
from cdp.aws.identity_graph import DynamoIdentityGraph
from cdp.aws.profile_store import ProfileRecords
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.identity.profile_state import state_from_json
from cdp.local.provisioning import ensure_table
from cdp.unification import UnificationStage
from tests.unit.test_identity_resolution import anon, conflict_free_events, email, uid, union_find_partition

CONFIG = IdentityConfig()
LANES = 4


def fresh_tables(endpoint: str) -> tuple[str, str]:
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    suffix = uuid.uuid4().hex  # not random: hypothesis seeds it
    identity, events = f"identity-{suffix}", f"events-{suffix}"
    for name, spec in ((identity, resources.IDENTITY_TABLE), (events, resources.EVENTS_TABLE)):
        ensure_table(ddb, resources.TableSpec(logical_id="T", local_name=name, env="X",
                                              partition_key=spec.partition_key, sort_key=spec.sort_key))
    return identity, events


def consumer(endpoint: str, identity: str, events: str) -> tuple[UnificationStage, DynamoIdentityGraph]:
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    graph = DynamoIdentityGraph(ddb, identity, CONFIG, records_table=events, sleep=lambda s: None)
    return UnificationStage(graph, ProfileRecords(ddb, events), CONFIG), graph


def to_event(n: int, identifiers: list[Identifier], day: int) -> dict[str, Any]:
    """A Segment identify carrying exactly these identifiers (extra anonymous ids as externalIds)."""
    event: dict[str, Any] = {"type": "identify", "messageId": f"m{n}", "timestamp": f"2026-04-{day:02d}T00:00:00.000Z",
                             "traits": {f"t{n % 3}": n}, "context": {}}
    anonymous = [i.value for i in identifiers if i.type == "anonymous_id"]
    for identifier in identifiers:
        if identifier.type == "user_id":
            event["userId"] = identifier.value
        elif identifier.type == "email":
            event["traits"]["email"] = identifier.value
    if anonymous:
        event["anonymousId"] = anonymous[0]
        event["context"]["externalIds"] = [{"id": a, "type": "anonymous_id", "collection": "users",
                                            "encoding": "none"} for a in anonymous[1:]]
    return event


def run_lanes(endpoint: str, identity: str, events_table: str, work: list[dict[str, Any]],
              rng: random.Random) -> None:
    lanes = [work[i::LANES] for i in range(LANES)]
    errors: list[BaseException] = []

    def consume(lane: list[dict[str, Any]], batch_sizes: list[int]) -> None:
        stage, _ = consumer(endpoint, identity, events_table)
        try:
            start = 0
            for size in batch_sizes:
                stage.store([("src", e) for e in lane[start:start + size]])
                start += size
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = []
    for lane in lanes:
        sizes = []
        left = len(lane)
        while left > 0:
            sizes.append(min(left, rng.randint(1, 4)))
            left -= sizes[-1]
        threads.append(threading.Thread(target=consume, args=(lane, sizes)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def snapshot(endpoint: str, identity: str) -> dict[str, dict[str, Any]]:
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    deserialize = TypeDeserializer().deserialize
    items: dict[str, dict[str, Any]] = {}
    for page in ddb.get_paginator("scan").paginate(TableName=identity):
        for raw in page["Items"]:
            item = {k: deserialize(v) for k, v in raw.items()}
            items[item["pk"]] = item
    return items


def check_invariants(items: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """No identifier on two live profiles, none orphaned, none over a limit; returns live profiles' ids."""
    live = {pk.removeprefix("prof#"): set(item.get("ids", set())) for pk, item in items.items()
            if pk.startswith("prof#") and item["status"] == "live"}
    # A visitor known by one anonymous id only is one item: the identifier's (docs/identity.md).
    solo = {item["profile_id"]: set(item.get("ids") or {pk}) for pk, item in items.items()
            if pk.startswith("ident#") and item.get("solo")}
    assert not set(solo) & {pk.removeprefix("prof#") for pk in items if pk.startswith("prof#")}, \
        "a solo profile also has a profile item"
    live.update(solo)
    seen: dict[str, str] = {}
    for profile, ids in live.items():
        for key in ids:
            assert key not in seen, f"{key} on two live profiles"
            seen[key] = profile
        counts: dict[str, int] = {}
        for key in ids:
            type_name = key.removeprefix("ident#").split(":", 1)[0]
            counts[type_name] = counts.get(type_name, 0) + 1
            assert counts[type_name] <= CONFIG.type_of(type_name).limit, (profile, ids)
    for pk, item in items.items():
        if pk.startswith("ident#"):
            owner = item["profile_id"]
            for _ in range(64):
                if owner in solo or items[f"prof#{owner}"]["status"] == "live":
                    break
                owner = items[f"prof#{owner}"]["merged_into"]
            assert seen.get(pk) == owner, f"{pk} resolves to {owner} but is not among its ids"
    assert set(seen) == {pk for pk in items if pk.startswith("ident#")}, "orphaned identifier"
    return live


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(groups=conflict_free_events(), seed=st.integers(0, 2**16))
def test_parallel_consumers_give_the_union_find_partition_and_the_same_traits(moto_endpoint, groups, seed):
    rng = random.Random(seed)
    events = [to_event(n, ids, rng.randint(1, 28)) for n, ids in enumerate(groups)]
    work = events + [rng.choice(events) for _ in range(len(events) // 2)]  # duplicates
    rng.shuffle(work)
    identity, events_table = fresh_tables(moto_endpoint)
    run_lanes(moto_endpoint, identity, events_table, work, rng)

    items = snapshot(moto_endpoint, identity)
    live = check_invariants(items)
    got = {frozenset(ids) for ids in live.values()}
    expected = {frozenset(f"ident#{i.type}:{i.value}" for i in group) for group in union_find_partition(groups)}
    assert got == expected
    # Traits: per profile, the latest event's value of each trait, as a sequential fold gives.
    for profile, ids in live.items():
        mine = [e for e, g in zip(events, groups, strict=True)
                if any(f"ident#{i.type}:{i.value}" in ids for i in g)]
        expected_traits: dict[str, tuple[str, str, Any]] = {}
        for event in mine:
            for name, value in event["traits"].items():
                candidate = (event["timestamp"], event["messageId"], value)
                if name not in expected_traits or candidate[:2] > expected_traits[name][:2]:
                    expected_traits[name] = candidate
        holder = items[f"prof#{profile}"] if f"prof#{profile}" in items else next(
            i for i in items.values() if i.get("solo") and i["profile_id"] == profile)
        state = state_from_json(holder["state"])
        assert {k: v.value for k, v in state.traits.items()} == {k: v[2] for k, v in expected_traits.items()}
        assert state.first_seen == min(e["timestamp"] for e in mine)
        assert state.last_seen_day == max(e["timestamp"] for e in mine)[:10]


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16))
def test_conflicting_traffic_keeps_the_invariants(moto_endpoint, seed):
    """Shared devices: several user ids over a few anonymous ids, in parallel."""
    rng = random.Random(seed)
    users = [uid(f"u{k}") for k in range(3)]
    devices = [anon(f"shared-{k}") for k in range(3)]
    mails = [email(f"m{k}@example.com") for k in range(3)]
    groups = [[rng.choice(users), rng.choice(devices)] + ([rng.choice(mails)] if rng.random() < 0.3 else [])
              for _ in range(14)]
    events = [to_event(n, ids, rng.randint(1, 28)) for n, ids in enumerate(groups)]
    work = events + [rng.choice(events) for _ in range(4)]
    rng.shuffle(work)
    identity, events_table = fresh_tables(moto_endpoint)
    run_lanes(moto_endpoint, identity, events_table, work, rng)
    live = check_invariants(snapshot(moto_endpoint, identity))
    user_keys = [{k for k in ids if k.startswith("ident#user_id:")} for ids in live.values()]
    assert all(len(keys) <= 1 for keys in user_keys)  # never two user ids on one profile
    assert sum(len(keys) for keys in user_keys) == len({u for g in groups for u in g if u.type == "user_id"})


def test_contended_batches_of_one_person_end_in_one_profile_with_the_latest_traits(moto_endpoint):
    identity, events_table = fresh_tables(moto_endpoint)
    groups = [[anon(f"device-{k}")] for k in range(4)] + [[anon(f"device-{k}"), uid("ana")] for k in range(4)]
    groups += [[anon(f"device-{k}"), email("ana@example.com")] for k in range(4)]
    events = [to_event(n, ids, 1 + n) for n, ids in enumerate(groups)]
    barrier = threading.Barrier(LANES)
    graphs: list[DynamoIdentityGraph] = []
    errors: list[BaseException] = []

    def consume(order: int) -> None:
        stage, graph = consumer(moto_endpoint, identity, events_table)
        graphs.append(graph)
        mine = events[order * 3:] + events[:order * 3]
        barrier.wait()
        try:
            for start in range(0, len(mine), 2):
                stage.store([("src", e) for e in mine[start:start + 2]])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(n,)) for n in range(LANES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    live = check_invariants(snapshot(moto_endpoint, identity))
    assert len(live) == 1
    (profile,) = live
    items = snapshot(moto_endpoint, identity)
    holder = items.get(f"prof#{profile}") or next(
        i for i in items.values() if i.get("solo") and i["profile_id"] == profile)
    state = state_from_json(holder["state"])
    latest = {f"t{n % 3}": n for n in range(len(events))}  # later days win
    assert {k: v.value for k, v in state.traits.items()} == {**latest, "email": "ana@example.com"}
    assert sum(g.retries for g in graphs) > 0, "the consumers never collided: the test proves nothing"
