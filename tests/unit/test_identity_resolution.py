"""Identity resolution rules on the in-memory graph: the scenarios a CDP exists for."""

from __future__ import annotations

from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.identity.resolution import MemoryIdentityGraph

CONFIG = IdentityConfig()


def uid(v: str) -> Identifier:
    return Identifier("user_id", v)


def anon(v: str) -> Identifier:
    return Identifier("anonymous_id", v)


def email(v: str) -> Identifier:
    return Identifier("email", v)


def test_laptop_signup_mobile_and_crm_end_in_one_profile():
    graph = MemoryIdentityGraph(CONFIG)
    laptop, _ = graph.apply([anon("laptop")])
    signup, plan = graph.apply([anon("laptop"), uid("ana"), email("ana@example.com")])
    assert signup == laptop and not plan.merged
    mobile, _ = graph.apply([anon("phone"), uid("ana")])
    crm, _ = graph.apply([email("ana@example.com")])
    assert laptop == mobile == crm
    assert graph.partition() == {frozenset({anon("laptop"), anon("phone"), uid("ana"), email("ana@example.com")})}


def test_two_people_sharing_a_device_stay_two_profiles():
    graph = MemoryIdentityGraph(CONFIG)
    ana, _ = graph.apply([anon("family-laptop"), uid("ana")])
    ben, plan = graph.apply([anon("family-laptop"), uid("ben")])
    assert ana != ben
    assert plan.dropped == (anon("family-laptop"),) and plan.blocked_merge == (ana,)
    assert graph.partition() == {frozenset({anon("family-laptop"), uid("ana")}), frozenset({uid("ben")})}


def test_a_chain_merges_three_profiles_into_the_oldest():
    graph = MemoryIdentityGraph(CONFIG)
    first, _ = graph.apply([anon("a")])
    second, _ = graph.apply([email("x@example.com")])
    third, _ = graph.apply([Identifier("phone", "+33612345678")])
    survivor, plan = graph.apply([anon("a"), email("x@example.com"), Identifier("phone", "+33612345678")])
    assert survivor == first and plan.merged == (second, third)
    assert graph.resolve_profile(third) == first
    assert len(graph.partition()) == 1


def test_profiles_with_different_user_ids_never_merge():
    graph = MemoryIdentityGraph(CONFIG)
    ana, _ = graph.apply([uid("ana"), email("shared@example.com")])
    ben, plan = graph.apply([uid("ben"), email("shared@example.com")])
    assert ana != ben and plan.dropped == (email("shared@example.com"),)


def test_email_limit_drops_the_lowest_priority_identifier_first():
    config = IdentityConfig()
    graph = MemoryIdentityGraph(config)
    emails = [email(f"e{i}@example.com") for i in range(5)]
    owner, _ = graph.apply([uid("ana"), *emails])
    # A sixth email would exceed the limit of 5: it is dropped, the event still attaches.
    again, plan = graph.apply([uid("ana"), email("e5@example.com")])
    assert again == owner and plan.dropped == (email("e5@example.com"),)


# --- property: without conflicts, any order gives the union-find partition -----------

from itertools import pairwise  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def union_find_partition(events: list[list[Identifier]]) -> set[frozenset[Identifier]]:
    parent: dict[Identifier, Identifier] = {}

    def find(x: Identifier) -> Identifier:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for event in events:
        for identifier in event:
            find(identifier)
        for a, b in pairwise(event):
            parent[find(a)] = find(b)
    groups: dict[Identifier, set[Identifier]] = {}
    for identifier in parent:
        groups.setdefault(find(identifier), set()).add(identifier)
    return {frozenset(g) for g in groups.values()}


@st.composite
def conflict_free_events(draw):
    """Events of a few people; each person's identifiers are theirs alone and within limits."""
    people = draw(st.integers(min_value=1, max_value=4))
    events = []
    for person in range(people):
        own = [uid(f"user-{person}"), email(f"p{person}@example.com"),
               *[anon(f"anon-{person}-{k}") for k in range(draw(st.integers(1, 4)))]]
        for _ in range(draw(st.integers(1, 5))):
            events.append(draw(st.lists(st.sampled_from(own), min_size=1, max_size=3, unique=True)))
    return events


@settings(max_examples=200, deadline=None)
@given(events=conflict_free_events(), data=st.data())
def test_any_order_and_duplication_gives_the_union_find_partition(events, data):
    shuffled = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events), max_size=5))))
    graph = MemoryIdentityGraph(CONFIG)
    for event in shuffled:
        graph.apply(event)
    assert graph.partition() == union_find_partition(events)
