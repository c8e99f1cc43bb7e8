"""Reading the storage layout: merge chains, history pages, links, merge log (in-memory tables)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.identity.identifiers import Identifier
from cdp.profiles import MAX_ROUNDS, ProfileReader, UserProfile, partition_rank
from tests.profile_layout import MemoryProfileTables, segment_event


def reader_with(tables: MemoryProfileTables, now: float = 1_800_000_000) -> ProfileReader:
    return ProfileReader(tables, clock=lambda: now)


def all_events(reader: ProfileReader, profile: UserProfile, limit: int, accept: Any = None) -> list[list[str]]:
    pages: list[list[str]] = []
    position = None
    for _ in range(1000):
        page = reader.events(profile, limit, position, accept or (lambda e: True))
        pages.append([e.event["messageId"] for e in page.items])
        if page.next_position is None:
            return pages
        position = page.next_position
    raise AssertionError("paging did not end")


def test_an_identifier_of_a_merged_profile_leads_to_the_survivor() -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.profile("p3", ["user_id:ana", "anonymous_id:a1", "email:ana@example.com"], merged_from=["p1", "p2"])
    layout.merged("p1", into="p2")
    layout.merged("p2", into="p3")
    layout.point("anonymous_id:old", "p1")

    reader = reader_with(tables)
    profile = reader.profile_by_identifier(Identifier("anonymous_id", "old"))

    assert profile is not None and profile.profile_id == "p3"
    assert profile.merged_from == ("p1", "p2")
    assert reader.profile_by_id("p1") == profile
    assert Identifier("email", "ana@example.com") in profile.identifiers
    assert reader.profile_by_identifier(Identifier("email", "nobody@example.com")) is None
    assert reader.profile_by_id("missing") is None


def test_a_merge_cycle_in_corrupt_data_ends_as_not_found() -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.merged("x", into="y")
    layout.merged("y", into="x")

    assert reader_with(tables).profile_by_id("x") is None


def test_history_is_the_union_of_user_and_anonymous_partitions_newest_first() -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.profile("p1", ["user_id:ana", "anonymous_id:laptop", "anonymous_id:phone", "email:ana@example.com"])
    layout.event(segment_event("page", "m1", "2026-03-01T10:00:00.000Z", anonymousId="laptop"))
    layout.event(segment_event("identify", "m2", "2026-03-02T10:00:00.000Z", anonymousId="laptop", userId="ana"))
    layout.event(segment_event("screen", "m3", "2026-03-03T10:00:00.000Z", anonymousId="phone"))
    layout.event(segment_event("track", "m4", "2026-03-04T10:00:00.000Z", userId="ana", event="Paid"))
    layout.event(segment_event("track", "other", "2026-03-05T10:00:00.000Z", userId="bob", event="Paid"))

    reader = reader_with(tables)
    profile = reader.profile_by_id("p1")
    assert profile is not None
    assert profile.history_partitions() == ["a#laptop", "a#phone", "u#ana"]

    assert all_events(reader, profile, 2) == [["m4", "m3"], ["m2", "m1"]]
    assert all_events(reader, profile, 10) == [["m4", "m3", "m2", "m1"]]


def test_expired_events_are_hidden_until_dynamodb_deletes_them() -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.profile("p1", ["user_id:ana"])
    layout.event(segment_event("track", "old", "2026-01-01T00:00:00.000Z", userId="ana"), expires_at=100)
    layout.event(segment_event("track", "new", "2026-02-01T00:00:00.000Z", userId="ana"))

    reader = reader_with(tables, now=1_000)
    profile = reader.profile_by_id("p1")
    assert profile is not None
    assert all_events(reader, profile, 10) == [["new"]]


def test_a_filtered_page_reads_a_bounded_number_of_items_and_carries_on() -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.profile("p1", ["user_id:ana"])
    for n in range(200):
        layout.event(segment_event("page" if n else "track", f"m{n:03d}", f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
                                   userId="ana", **({"event": "Rare"} if not n else {})))
    reader = reader_with(tables)
    profile = reader.profile_by_id("p1")
    assert profile is not None

    tables.items_read = 0
    first = reader.events(profile, 5, None, lambda e: e.get("event") == "Rare")

    assert first.items == [] and first.next_position is not None
    assert tables.items_read <= MAX_ROUNDS * (5 + 1)
    pages = all_events(reader, profile, 5, lambda e: e.get("event") == "Rare")
    assert [m for page in pages for m in page] == ["m000"]


partition_events = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 5)),  # (timestamp, messageId): ties happen
    max_size=14, unique=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(partition_events, min_size=1, max_size=4), st.integers(1, 5), st.booleans())
def test_paging_returns_every_event_once_in_order_with_bounded_reads(partitions: list[list[tuple[int, int]]],
                                                                     limit: int, filtered: bool) -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    names = [f"anon-{n}" for n in range(len(partitions))]
    layout.profile("p1", [f"anonymous_id:{name}" for name in names])
    expected: list[tuple[tuple[str, str], str]] = []
    for name, events in zip(names, partitions, strict=True):
        for ts, mid in events:
            timestamp = f"2026-01-01T00:00:0{ts}.000Z"
            event = segment_event("track", f"m{mid}", timestamp, anonymousId=name, event=f"E{(ts + mid) % 2}")
            layout.event(event)
            if not filtered or event["event"] == "E0":
                expected.append(((f"{timestamp}#m{mid}", partition_rank(f"a#{name}")), f"{name}/m{mid}"))
    expected.sort(reverse=True)

    reader = reader_with(tables)
    profile = reader.profile_by_id("p1")
    assert profile is not None
    got: list[str] = []
    position = None
    for _ in range(500):
        tables.items_read = 0
        page = reader.events(profile, limit, position, (lambda e: e["event"] == "E0") if filtered else (lambda e: True))
        assert tables.items_read <= MAX_ROUNDS * len(partitions) * (limit + 1)
        assert len(page.items) <= limit
        got.extend(f"{e.event['anonymousId']}/{e.event['messageId']}" for e in page.items)
        if page.next_position is None:
            break
        position = page.next_position
    assert got == [name for _, name in expected]


def test_accounts_of_a_person_include_those_of_merged_profiles_once() -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.profile("p2", ["user_id:ana"], merged_from=["p1"])
    layout.merged("p1", into="p2")
    layout.membership("p1", "acme")
    layout.membership("p1", "globex")
    layout.membership("p2", "acme")
    layout.membership("p2", "initech")
    layout.membership("p9", "umbrella")  # someone else's

    reader = reader_with(tables)
    profile = reader.profile_by_id("p2")
    assert profile is not None
    first = reader.accounts_of(profile, 2)
    assert [a.group_id for a in first.items] == ["acme", "globex"]
    second = reader.accounts_of(profile, 2, first.next_position)
    assert [a.group_id for a in second.items] == ["initech"] and second.next_position is None


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_members_are_live_profiles_listed_once_across_pages(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 8))
    ids = [f"p{n}" for n in range(count)]
    # Each profile is merged into a later one or stays live: chains end at live profiles.
    into = {pid: data.draw(st.sampled_from([None, *ids[n + 1:]])) for n, pid in enumerate(ids)}
    members = data.draw(st.sets(st.sampled_from(ids), min_size=1))
    limit = data.draw(st.integers(1, 4))

    def live_of(pid: str) -> str:
        while into[pid] is not None:
            pid = into[pid]  # type: ignore[assignment]
        return pid

    tables = MemoryProfileTables()
    layout = tables.writer()
    for pid in ids:
        if into[pid] is None:
            layout.profile(pid, [f"user_id:u-{pid}"], merged_from=sorted(p for p in ids if p != pid
                                                                         and live_of(p) == pid))
        else:
            layout.merged(pid, into=into[pid])  # type: ignore[arg-type]
    layout.account("acme")
    for pid in members:
        layout.membership(pid, "acme")

    reader = reader_with(tables)
    got: list[str] = []
    position = None
    for _ in range(100):
        page = reader.members_of("acme", limit, position)
        got.extend(p.profile_id for p in page.items)
        if page.next_position is None:
            break
        position = page.next_position
    expected = sorted({live_of(p) for p in members}, key=lambda live: min(p for p in members if live_of(p) == live))
    assert got == expected


def test_the_merge_log_gathers_merges_into_every_merged_profile() -> None:
    tables = MemoryProfileTables()
    layout = tables.writer()
    layout.profile("p3", ["user_id:ana"], merged_from=["p1", "p2"])
    layout.merge_log("p2", "p1", ["anonymous_id:a1"], "m1", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")
    layout.merge_log("p3", "p2", ["email:ana@example.com"], "m2", "2026-01-02T00:00:00Z", "2026-01-02T00:00:01Z")
    layout.blocked("p3", "m3", "2026-01-03T00:00:00Z", ["user_id:bob"], ["p7"])

    reader = reader_with(tables)
    profile = reader.profile_by_id("p3")
    assert profile is not None
    log = reader.merge_log(profile)

    assert [(m["survivor"], m["merged"]) for m in log.merges] == [("p2", "p1"), ("p3", "p2")]
    assert [b["message_id"] for b in log.blocked] == ["m3"]
