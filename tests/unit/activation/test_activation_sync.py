"""Batch syncs (cdp.activation.sync): the sorted merge, the chunks, and the run loop over
in-memory ports: a first sync sends everyone, the next only the difference, and a run
stopped at any chunk (deadline, retry, crash) and resumed ends as an uninterrupted one."""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.activation.delivery import OutboundMessage, Outcome
from cdp.activation.sync import (
    BatchSync,
    Change,
    IdBuffer,
    LeaseLost,
    SyncState,
    UnsortedStream,
    changes,
    chunked,
    merge_diff,
    sync_message,
)

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
ids_strategy = st.sets(st.text(alphabet="abcdefghij0123456789-_é", min_size=1, max_size=6), max_size=60)


# --- the merge ----------------------------------------------------------------------------------


@given(ids_strategy, ids_strategy)
def test_merge_yields_the_union_once_with_the_symmetric_difference_as_changes(current: set[str],
                                                                            previous: set[str]) -> None:
    merged = list(merge_diff(sorted(current), sorted(previous)))
    assert [pid for pid, _ in merged] == sorted(current | previous)
    assert {pid for pid, t in merged if t == "entered"} == current - previous
    assert {pid for pid, t in merged if t == "exited"} == previous - current
    assert {pid for pid, t in merged if t is None} == current & previous
    assert [c.profile_id for c in changes(sorted(current), sorted(previous))] == sorted(current ^ previous)


@given(ids_strategy, ids_strategy, st.integers(min_value=1, max_value=13))
def test_chunks_hold_batch_size_changes_but_the_last(current: set[str], previous: set[str], size: int) -> None:
    chunks = list(chunked(changes(sorted(current), sorted(previous)), size))
    assert all(len(c) == size for c in chunks[:-1])
    assert not chunks or 1 <= len(chunks[-1]) <= size
    assert [c.profile_id for chunk in chunks for c in chunk] == sorted(current ^ previous)


def test_an_unsorted_list_is_refused_rather_than_merged_wrong() -> None:
    with pytest.raises(UnsortedStream):
        list(merge_diff(["b", "a"], []))
    with pytest.raises(UnsortedStream):
        list(merge_diff([], ["a", "a"]))


def test_a_sync_message_is_an_audience_membership_body_with_a_stable_id() -> None:
    message = sync_message("meta-ads", "pro", "20261206T120000Z-abcd1234", "2026-12-06T12:00:00.000Z",
                           Change("p1", "exited"))
    assert message.deduplication_id == "sync:20261206T120000Z-abcd1234:pro:p1:exited"
    assert message.body == {
        "kind": "audience_membership", "destination_id": "meta-ads",
        "message_id": "sync:20261206T120000Z-abcd1234:pro:p1:exited", "audience_id": "pro", "profile_id": "p1",
        "transition": "exited", "event": "Audience Exited", "version": 0, "at": "2026-12-06T12:00:00.000Z",
        "profile": None}


# --- in-memory ports --------------------------------------------------------------------------------


class Members:
    def __init__(self, ids: Collection[str] = ()) -> None:
        self.ids = sorted(ids)

    def members(self, audience_id: str, after: str | None) -> Iterator[str]:
        start = 0 if after is None else bisect.bisect_right(self.ids, after)
        yield from self.ids[start:]


class Snapshots:
    def __init__(self) -> None:
        self.parts: dict[tuple[str, int], list[str]] = {}
        self.manifests: dict[str, tuple[str, int, int]] = {}  # key -> (sync id, parts, members)

    def read(self, key: str, after: str | None) -> Iterator[str]:
        sync_id, parts, _ = self.manifests[key]
        for n in range(1, parts + 1):
            yield from (p for p in self.parts[(sync_id, n)] if after is None or p > after)

    def size(self, key: str) -> int:
        return self.manifests[key][2]

    def write_part(self, destination_id: str, audience_id: str, sync_id: str, number: int,
                   ids: Iterable[str]) -> None:
        written = list(ids)
        assert written == sorted(set(written)) and written
        self.parts[(sync_id, number)] = written

    def finish(self, destination_id: str, audience_id: str, sync_id: str, parts: int, members: int) -> str:
        key = f"snapshots/{destination_id}/{audience_id}/{sync_id}/manifest.json"
        self.manifests[key] = (sync_id, parts, members)
        return key

    def prune(self, destination_id: str, audience_id: str, keep: Collection[str]) -> int:
        gone = {s for s, _ in self.parts} - set(keep)
        self.parts = {k: v for k, v in self.parts.items() if k[0] not in gone}
        self.manifests = {k: v for k, v in self.manifests.items() if v[0] not in gone}
        return len(gone)

    def content(self, key: str) -> list[str]:
        return list(self.read(key, None))


class States:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], SyncState] = {}
        self.leases: dict[tuple[str, str], tuple[str, datetime]] = {}
        self.saves = 0

    def load(self, destination_id: str, audience_id: str) -> SyncState | None:
        return self.items.get((destination_id, audience_id))

    def acquire(self, destination_id: str, audience_id: str, owner: str, until: datetime, now: datetime) -> bool:
        held = self.leases.get((destination_id, audience_id))
        if held and held[0] != owner and held[1] >= now:
            return False
        self.leases[(destination_id, audience_id)] = (owner, until)
        return True

    def save(self, state: SyncState, owner: str) -> None:
        held = self.leases.get((state.destination_id, state.audience_id))
        if not held or held[0] != owner:
            raise LeaseLost("lost")
        self.items[(state.destination_id, state.audience_id)] = state
        self.saves += 1

    def release(self, destination_id: str, audience_id: str, owner: str) -> None:
        if self.leases.get((destination_id, audience_id), ("",))[0] == owner:
            del self.leases[(destination_id, audience_id)]


class Crash(Exception):
    pass


class Destination:
    """Records every message; answers per a script keyed by the call's number (from 1)."""

    def __init__(self, script: dict[int, str] | None = None, permanent: Collection[str] = ()) -> None:
        self.calls: list[list[OutboundMessage]] = []
        self.script = script or {}
        self.permanent = set(permanent)

    def __call__(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        self.calls.append(list(messages))
        action = self.script.get(len(self.calls))
        if action == "crash":
            raise Crash("boom")
        if action == "retry":
            return [Outcome("retry", "HTTP 503")] * len(messages)
        return [Outcome("permanent", "no usable identifier") if m.body["profile_id"] in self.permanent
                else Outcome("delivered") for m in messages]

    def sent(self) -> set[tuple[str, str]]:
        return {(m.body["profile_id"], m.body["transition"]) for call in self.calls for m in call}

    def delivered_ids(self) -> set[str]:
        return {m.deduplication_id for call in self.calls for m in call}


def engine(members: Members, snapshots: Snapshots, states: States, **options: object) -> BatchSync:
    defaults: dict[str, object] = {"now": lambda: NOW, "part_members": 7, "checkpoint_seconds": 1e9,
                                   "stop_margin_s": 0.0}
    defaults.update(options)
    return BatchSync(members, snapshots, states, **defaults)  # type: ignore[arg-type]


def forever() -> float:
    return 600.0


def test_the_first_sync_sends_everyone_and_the_next_only_the_difference() -> None:
    members, snapshots, states = Members([f"p{n:03d}" for n in range(25)]), Snapshots(), States()
    first = Destination()
    result = engine(members, snapshots, states).run("meta", "pro", 10, first, forever)
    assert result.outcome == "done"
    assert [len(c) for c in first.calls] == [10, 10, 5]
    assert first.sent() == {(f"p{n:03d}", "entered") for n in range(25)}
    state = states.load("meta", "pro")
    assert state is not None and state.status == "done" and state.last_success_at
    assert snapshots.content(state.snapshot_key or "") == members.ids
    assert state.counts.adds == 25 and state.counts.members == 25

    members.ids = sorted(set(members.ids) - {"p003", "p010"} | {"p100", "p005a"})
    second = Destination()
    engine(members, snapshots, states).run("meta", "pro", 10, second, forever)
    assert second.sent() == {("p003", "exited"), ("p010", "exited"), ("p100", "entered"), ("p005a", "entered")}
    after = states.load("meta", "pro")
    assert after is not None and after.sync_id != state.sync_id
    assert snapshots.content(after.snapshot_key or "") == members.ids
    assert (after.counts.adds, after.counts.removes) == (2, 2)

    third = Destination()
    engine(members, snapshots, states).run("meta", "pro", 10, third, forever)
    assert third.calls == []
    # Snapshots kept: the last sync's own and its base; the first one is pruned.
    assert len({s for s, _ in snapshots.parts}) == 2


def test_a_permanent_failure_is_counted_and_tried_again_at_the_next_sync() -> None:
    members, snapshots, states = Members(["a", "b", "c"]), Snapshots(), States()
    engine(members, snapshots, states).run("meta", "pro", 10, Destination(permanent={"b"}), forever)
    state = states.load("meta", "pro")
    assert state is not None and state.counts.failed == 1 and state.failures == ("entered: no usable identifier",)
    assert snapshots.content(state.snapshot_key or "") == ["a", "c"]
    again = Destination()
    engine(members, snapshots, states).run("meta", "pro", 10, again, forever)
    assert again.sent() == {("b", "entered")}
    # A remove that fails stays in the snapshot, so it is tried again too.
    members.ids = ["a"]
    engine(members, snapshots, states).run("meta", "pro", 10, Destination(permanent={"c"}), forever)
    kept = states.load("meta", "pro")
    assert kept is not None and snapshots.content(kept.snapshot_key or "") == ["a", "c"]


def test_a_held_lease_refuses_a_second_run() -> None:
    members, snapshots, states = Members(["a", "b"]), Snapshots(), States()
    states.acquire("meta", "pro", "someone-else", NOW + timedelta(minutes=5), NOW)
    deliver = Destination()
    assert engine(members, snapshots, states).run("meta", "pro", 10, deliver, forever).outcome == "busy"
    assert deliver.calls == []


def test_a_retry_sets_not_before_from_retry_after_and_the_sync_waits() -> None:
    members, snapshots, states = Members(["a", "b", "c"]), Snapshots(), States()
    clock = [NOW]

    def retry_later(messages: Sequence[OutboundMessage]) -> list[Outcome]:
        return [Outcome("retry", "HTTP 429", 120.0)] * len(messages)

    sync = engine(members, snapshots, states, now=lambda: clock[0])
    stopped = sync.run("meta", "pro", 2, retry_later, forever)
    assert stopped.outcome == "stopped" and stopped.reason == "retry: HTTP 429"
    state = states.load("meta", "pro")
    assert state is not None and state.status == "running" and state.cursor is None
    assert sync.run("meta", "pro", 2, Destination(), forever).outcome == "waiting"
    clock[0] = NOW + timedelta(minutes=3)
    assert sync.run("meta", "pro", 2, Destination(), forever).outcome == "done"


def test_an_exception_marks_the_sync_failed_and_the_next_run_resumes_it() -> None:
    members, snapshots, states = Members([f"p{n}" for n in range(20)]), Snapshots(), States()
    with pytest.raises(Crash):
        engine(members, snapshots, states).run("meta", "pro", 3, Destination({4: "crash"}), forever)
    state = states.load("meta", "pro")
    assert state is not None and state.status == "failed" and state.error == "Crash"
    assert not states.leases
    assert engine(members, snapshots, states).run("meta", "pro", 3, Destination(), forever).outcome == "done"


@settings(max_examples=150, deadline=None)
@given(current=ids_strategy, previous=ids_strategy, size=st.integers(min_value=1, max_value=5),
       part=st.integers(min_value=1, max_value=9), stop_at=st.integers(min_value=1, max_value=12),
       how=st.sampled_from(["deadline", "retry", "crash"]), memory=st.integers(min_value=1, max_value=9),
       span=st.integers(min_value=1, max_value=30))
def test_a_sync_stopped_at_any_chunk_and_resumed_ends_as_an_uninterrupted_one(
        current: set[str], previous: set[str], size: int, part: int, stop_at: int, how: str, memory: int,
        span: int) -> None:
    # memory: the buffer spills to its file and is truncated across the spill; span: sparse chunks.
    def world() -> tuple[Members, Snapshots, States]:
        members, snapshots, states = Members(previous), Snapshots(), States()
        engine(members, snapshots, states, part_members=part).run("d", "a", 50, Destination(), forever)
        members.ids = sorted(current)
        return members, snapshots, states

    members, snapshots, states = world()
    straight = Destination()
    engine(members, snapshots, states, part_members=part).run("d", "a", size, straight, forever)
    expected = states.load("d", "a")
    assert expected is not None

    members, snapshots, states = world()
    interrupted = Destination({stop_at: how} if how != "deadline" else {})

    def deadline() -> float:
        return 0.0 if how == "deadline" and len(interrupted.calls) >= stop_at else 600.0

    sync = engine(members, snapshots, states, part_members=part, memory_ids=memory, span_members=span)
    outcomes = []
    for _ in range(20):
        try:
            outcomes.append(sync.run("d", "a", size, interrupted, deadline).outcome)
            if outcomes[-1] == "done":
                break
        except Crash:
            outcomes.append("crashed")
        interrupted.script = {}
        how = "resumed"
    else:
        pytest.fail("never finished")
    if len(straight.calls) > stop_at:  # the stop happened, before the end
        assert outcomes[0] != "done"
    state = states.load("d", "a")
    assert state is not None and state.status == "done"
    assert interrupted.sent() == straight.sent() == {(p, "entered") for p in current - previous} | {
        (p, "exited") for p in previous - current}
    assert {m.split(":", 2)[2] for m in interrupted.delivered_ids()} == \
        {m.split(":", 2)[2] for m in straight.delivered_ids()}
    assert len({m.split(":")[1] for m in interrupted.delivered_ids()}) <= 1  # one sync id throughout
    assert snapshots.content(state.snapshot_key or "") == sorted(current)
    assert (state.counts.adds, state.counts.removes, state.counts.members, state.counts.merged) == \
        (expected.counts.adds, expected.counts.removes, expected.counts.members, expected.counts.merged)


def test_a_sparse_difference_goes_out_once_its_chunk_spans_span_members_ids() -> None:
    members, snapshots, states = Members([f"p{n:04d}" for n in range(100)]), Snapshots(), States()
    engine(members, snapshots, states).run("meta", "pro", 50, Destination(), forever)
    members.ids = sorted(set(members.ids) | {"p0000a", "p0099a"})
    deliver = Destination()
    engine(members, snapshots, states, part_members=20, span_members=50, memory_ids=10).run(
        "meta", "pro", 50, deliver, forever)
    # Two changes 99 ids apart: the first goes out alone once it spans 50 ids.
    assert [[m.body["profile_id"] for m in call] for call in deliver.calls] == [["p0000a"], ["p0099a"]]
    state = states.load("meta", "pro")
    assert state is not None and snapshots.content(state.snapshot_key or "") == members.ids
    assert max(len(ids) for (sync_id, _), ids in snapshots.parts.items() if sync_id == state.sync_id) <= 70


def test_a_sparse_difference_shares_one_chunk_when_its_span_fits() -> None:
    members, snapshots, states = Members([f"p{n:04d}" for n in range(100)]), Snapshots(), States()
    engine(members, snapshots, states).run("meta", "pro", 50, Destination(), forever)
    members.ids = sorted(set(members.ids) | {"p0000a", "p0099a"})
    deliver = Destination()
    # Parts every 20 ids, 10 ids in memory: the 99 unchanged ids between the two changes
    # wait on disk, not in a chunk of their own.
    engine(members, snapshots, states, part_members=20, memory_ids=10).run("meta", "pro", 50, deliver, forever)
    assert [[m.body["profile_id"] for m in call] for call in deliver.calls] == [["p0000a", "p0099a"]]
    state = states.load("meta", "pro")
    assert state is not None and snapshots.content(state.snapshot_key or "") == members.ids


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.text("abc\u00e9", min_size=1, max_size=4), max_size=40),
       memory=st.integers(min_value=1, max_value=7), cut=st.integers(min_value=0, max_value=45))
def test_the_id_buffer_keeps_order_across_its_spill_and_truncation(ids: list[str], memory: int, cut: int) -> None:
    buffer = IdBuffer(memory)
    try:
        for pid in ids:
            buffer.append(pid)
        assert len(buffer) == len(ids) and list(buffer) == ids
        buffer.truncate(cut)
        kept = ids[:cut]
        assert len(buffer) == len(kept) and list(buffer) == kept
        for pid in ["x", "y", "z"] * 3:  # appends after a truncation land after what was kept
            buffer.append(pid)
        assert list(buffer) == kept + ["x", "y", "z"] * 3
        buffer.clear()
        assert len(buffer) == 0 and list(buffer) == []
        buffer.append("after")
        assert list(buffer) == ["after"]
    finally:
        buffer.close()
    assert len(buffer) == 0 and list(buffer) == []


def test_the_id_buffer_holds_at_most_memory_ids_in_memory() -> None:
    buffer = IdBuffer(5)
    for n in range(23):
        buffer.append(f"p{n:02d}")
        assert len(buffer._tail) < 5
    assert buffer._file is not None and list(buffer) == [f"p{n:02d}" for n in range(23)]
    buffer.close()
    assert buffer._file is None
