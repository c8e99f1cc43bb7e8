"""The DynamoDB identity graph: scenarios, and parallel consumers against a serialising moto server."""

from __future__ import annotations

import random
import threading
import uuid

import boto3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp import resources
from cdp.aws.identity_graph import DynamoIdentityGraph
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.identity.resolution import MemoryIdentityGraph
from cdp.local.provisioning import ensure_table
from tests.unit.test_identity_resolution import anon, conflict_free_events, email, uid, union_find_partition

CONFIG = IdentityConfig()
LANES = 4


def fresh_graph(endpoint: str) -> tuple[DynamoIdentityGraph, str]:
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    name = f"identity-{uuid.uuid4().hex}"  # not random: hypothesis seeds it
    spec = resources.TableSpec(logical_id="T", local_name=name, env="X",
                               partition_key=resources.IDENTITY_TABLE.partition_key)
    ensure_table(ddb, spec)
    return DynamoIdentityGraph(ddb, name, CONFIG, sleep=lambda s: None), name


def partition(graph: DynamoIdentityGraph, identifiers: set[Identifier]) -> set[frozenset[Identifier]]:
    groups: dict[str, set[Identifier]] = {}
    for identifier in identifiers:
        profile = graph.lookup_identifier(identifier)
        assert profile is not None, identifier
        groups.setdefault(profile, set()).add(identifier)
    for profile, members in groups.items():
        assert graph.identifiers_of(profile) == members, "profile and identifier items disagree"
    return {frozenset(g) for g in groups.values()}


def test_scenario_laptop_signup_mobile_crm_and_a_shared_device(moto_endpoint):
    graph, _ = fresh_graph(moto_endpoint)
    laptop, _ = graph.resolve([anon("laptop")])
    graph.resolve([anon("laptop"), uid("ana"), email("ana@example.com")])
    graph.resolve([anon("phone"), uid("ana")])
    crm, _ = graph.resolve([email("ana@example.com")])
    assert crm == laptop
    ben, plan = graph.resolve([anon("laptop"), uid("ben")])
    assert ben != laptop and plan.dropped == (anon("laptop"),)
    assert partition(graph, {anon("laptop"), anon("phone"), uid("ana"), email("ana@example.com"),
                             uid("ben")}) == {
        frozenset({anon("laptop"), anon("phone"), uid("ana"), email("ana@example.com")}),
        frozenset({uid("ben")}),
    }
    # Replaying an event writes nothing and changes nothing.
    assert graph.resolve([anon("phone"), uid("ana")])[0] == laptop


def test_merged_profile_ids_stay_resolvable(moto_endpoint):
    graph, _ = fresh_graph(moto_endpoint)
    first, _ = graph.resolve([anon("a")])
    second, _ = graph.resolve([email("x@example.com")])
    third, _ = graph.resolve([Identifier("phone", "+33612345678")])
    survivor, plan = graph.resolve([anon("a"), email("x@example.com"), Identifier("phone", "+33612345678")])
    assert survivor == first and set(plan.merged) == {second, third}
    assert graph.profile_of(second) == graph.profile_of(third) == first


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(events=conflict_free_events(), seed=st.integers(0, 2**16))
def test_parallel_consumers_converge_to_the_union_find_partition(moto_endpoint, events, seed):
    graph, name = fresh_graph(moto_endpoint)
    rng = random.Random(seed)
    work = events + [rng.choice(events) for _ in range(len(events) // 2)]  # duplicates
    rng.shuffle(work)
    lanes = [work[i::LANES] for i in range(LANES)]
    errors: list[BaseException] = []

    def consume(lane: list[list[Identifier]]) -> None:
        mine = DynamoIdentityGraph(graph._ddb, name, CONFIG, sleep=lambda s: None)  # one per consumer
        try:
            for event in lane:
                mine.resolve(event)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    everything = {i for event in events for i in event}
    expected = union_find_partition(events)
    assert partition(graph, everything) == expected
    # And the same as the in-memory reference applying the events one by one.
    reference = MemoryIdentityGraph(CONFIG)
    for event in work:
        reference.apply(event)
    assert reference.partition() == expected


def test_contended_merges_of_one_person_end_in_one_profile(moto_endpoint):
    graph, name = fresh_graph(moto_endpoint)
    graphs: list[DynamoIdentityGraph] = []
    ids = [uid("ana"), email("ana@example.com"), *[anon(f"device-{k}") for k in range(4)]]
    # Every thread first creates a profile for its own device, then links it to Ana:
    # many creates and merges race on the same profiles.
    events = [[anon(f"device-{k}")] for k in range(4)] + [[anon(f"device-{k}"), uid("ana")] for k in range(4)]
    events += [[anon(f"device-{k}"), email("ana@example.com")] for k in range(4)]
    barrier = threading.Barrier(6)

    def consume(order: int) -> None:
        mine = DynamoIdentityGraph(graph._ddb, name, CONFIG, sleep=lambda s: None)  # one per consumer
        graphs.append(mine)
        barrier.wait()
        for event in events[order:] + events[:order]:
            mine.resolve(event)

    threads = [threading.Thread(target=consume, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert partition(graph, set(ids)) == {frozenset(ids)}
    assert sum(g.retries for g in graphs) > 0, "the threads never collided: the test proves nothing"
