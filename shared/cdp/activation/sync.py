"""Batch syncs: an audience's adds and removes since the last successful sync, to one destination.

Per destination and audience a schedule runs :meth:`BatchSync.run`. It streams two sorted
lists of profile ids side by side:

* **current**: the audience's members now (the memberships table's sparse ``members``
  index, read in pages of 1,000, sorted by profile id; ``cdp.aws.sync_store``). A global
  secondary index is eventually consistent: an entry or exit of the last second or so may
  be missing from it, and is then sent by the next sync (or by the live router);
* **previous**: the snapshot of the last successful sync, the ids the destination was
  told it holds (S3, gzip text, one id a line).

A sorted merge (:func:`merge_diff`) yields each id of either list once: in current only,
an add (``entered``); in previous only, a remove (``exited``); in both, nothing to send.
Memory holds a chunk of changes and at most ``memory_ids`` ids of the new snapshot not yet
written (more wait in a temporary file: Lambda's ``/tmp``), never the audience. The first
sync has no previous snapshot: every member is an add.

**Chunks.** The changes go to ``deliver`` (the destination's ``send``, after the caller
adds the profiles) ``batch_size`` at a time (a chunk also goes out, smaller, once it spans
``span_members`` ids of either list: a sparse difference in a large audience), as ``audience_membership`` messages whose
``message_id`` and deduplication id are ``sync:<sync id>:<audience>:<profile>:<transition>``:
the same on every attempt of the same sync, so a chunk sent again after a resume is a
repeat the destination can drop (batch APIs' adds and removes are idempotent anyway).

**The new snapshot** is what the destination now holds: the current members, but an add
that failed permanently is left out and a remove that failed permanently is kept, so the
next sync tries them again (a profile that had no usable identifier may have one then).
It is written as numbered part objects (gzip text) and, at the end, a manifest listing
them; the parts concatenated are one gzip stream of the sorted ids.

**Checkpoints.** The run's state (``SyncState``) is saved, conditional on holding the
lease, after a delivered chunk once ``part_members`` ids of the new snapshot are waiting
or ``checkpoint_seconds`` have passed, and whenever the run stops: the part of the new
snapshot up to ``cursor`` is written first, then the state with ``cursor`` (every id up to
it is done: delivered, failed for good, or unchanged). A resumed run re-opens both lists
after ``cursor``. A chunk the destination asks to retry, or the ``deadline`` (seconds
left, as a Lambda context tells), stops the run with the cursor *before* that chunk; a
retry also sets ``not_before`` from its ``Retry-After``.

An exception (a bug, an AWS error) leaves the last checkpoint: the chunks delivered since
are derived again and sent again with the same ids. If a profile's membership changed
between the crash and the resume, in that range only, a sent add may be left at the
destination until it enters and leaves again: checkpoints are frequent to keep the range
small, and a clean stop (deadline, retry) never leaves one.

When both lists are exhausted the manifest is written, the state becomes ``done`` with
``last_success_at`` and the new snapshot's key, and snapshots but the last two are deleted.

This module is pure: the members, the snapshots and the state are ports (``cdp.aws.sync_store``
has the AWS adapters).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from cdp.activation.delivery import OutboundMessage, Outcome
from cdp.segmentation.audience_events import EVENT_NAMES

Transition = Literal["entered", "exited"]
Status = Literal["running", "done", "failed"]
MAX_FAILURE_REASONS = 5
MAX_REASON = 200
PART_MEMBERS = 50_000  # ids of the new snapshot between checkpoints (a part object), when no chunk is open
SPAN_MEMBERS = 1_000_000  # ids a chunk may span before it goes out with fewer than batch_size changes
MEMORY_IDS = 50_000  # ids of the new snapshot kept in memory; more wait in a temporary file
CHECKPOINT_SECONDS = 10.0
STOP_MARGIN_S = 30.0  # stop this long before the deadline: a last chunk and the checkpoint fit
DEADLINE_CHECK_EVERY = 1_000  # ids merged between two looks at the deadline


class UnsortedStream(ValueError):
    """A list of profile ids that is not strictly increasing: the merge would be wrong."""


def _sorted(ids: Iterable[str], name: str) -> Iterator[str]:
    last: str | None = None
    for pid in ids:
        if last is not None and pid <= last:
            raise UnsortedStream(f"{name} profile ids are not strictly increasing")
        last = pid
        yield pid


def merge_diff(current: Iterable[str], previous: Iterable[str]) -> Iterator[tuple[str, Transition | None]]:
    """Every id of two strictly increasing lists once, in order, with what changed:
    ``entered`` (in ``current`` only), ``exited`` (in ``previous`` only) or None (both)."""
    now_ids, before_ids = _sorted(current, "current"), _sorted(previous, "previous")
    a, b = next(now_ids, None), next(before_ids, None)
    while a is not None and b is not None:
        if a < b:
            yield a, "entered"
            a = next(now_ids, None)
        elif b < a:
            yield b, "exited"
            b = next(before_ids, None)
        else:
            yield a, None
            a, b = next(now_ids, None), next(before_ids, None)
    while a is not None:
        yield a, "entered"
        a = next(now_ids, None)
    while b is not None:
        yield b, "exited"
        b = next(before_ids, None)


@dataclass(frozen=True)
class Change:
    profile_id: str
    transition: Transition


def changes(current: Iterable[str], previous: Iterable[str]) -> Iterator[Change]:
    """The adds and removes only, in profile id order."""
    for pid, transition in merge_diff(current, previous):
        if transition is not None:
            yield Change(pid, transition)


def chunked(items: Iterable[Change], size: int) -> Iterator[list[Change]]:
    """Lists of ``size`` items (the last one shorter), holding one list at a time."""
    if size < 1:
        raise ValueError("size must be at least 1")
    chunk: list[Change] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def sync_message_id(sync_id: str, audience_id: str, profile_id: str, transition: Transition) -> str:
    return f"sync:{sync_id}:{audience_id}:{profile_id}:{transition}"


def sync_message(destination_id: str, audience_id: str, sync_id: str, at: str, change: Change) -> OutboundMessage:
    """The ``audience_membership`` message of one change (``profile`` None: the caller adds it)."""
    message_id = sync_message_id(sync_id, audience_id, change.profile_id, change.transition)
    return OutboundMessage(deduplication_id=message_id, body={
        "kind": "audience_membership", "destination_id": destination_id, "message_id": message_id,
        "audience_id": audience_id, "profile_id": change.profile_id, "transition": change.transition,
        "event": EVENT_NAMES[change.transition], "version": 0, "at": at, "profile": None,
    })


def new_sync_id(now: datetime) -> str:
    """Sorts by time (snapshots are pruned by it), unique by its random tail."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- state ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncCounts:
    """What a sync did so far (over all its invocations)."""

    adds: int = 0  # delivered
    removes: int = 0  # delivered
    failed: int = 0  # permanent failures (tried again at the next sync)
    chunks: int = 0  # delivered to the destination (a resumed chunk counts again)
    merged: int = 0  # ids of either list processed
    members: int = 0  # ids in the new snapshot

    def plus(self, other: SyncCounts) -> SyncCounts:
        return SyncCounts(self.adds + other.adds, self.removes + other.removes, self.failed + other.failed,
                          self.chunks + other.chunks, self.merged + other.merged, self.members + other.members)

    def as_dict(self) -> dict[str, int]:
        return {"adds": self.adds, "removes": self.removes, "failed": self.failed, "chunks": self.chunks,
                "merged": self.merged, "members": self.members}


@dataclass(frozen=True)
class SyncState:
    """The state item of one (destination, audience): the running sync, or the last one done."""

    destination_id: str
    audience_id: str
    status: Status
    sync_id: str
    started_at: str
    updated_at: str
    base_snapshot_key: str | None = None  # the snapshot this sync diffs against
    base_members: int | None = None  # its size (progress estimate)
    cursor: str | None = None  # every id up to it is done
    parts: int = 0  # part objects of the new snapshot written
    counts: SyncCounts = field(default_factory=SyncCounts)
    failures: tuple[str, ...] = ()  # the first permanent failures' reasons
    snapshot_key: str | None = None  # the last successful sync's snapshot
    last_success_at: str | None = None
    finished_at: str | None = None
    stopped: str | None = None  # why the last invocation stopped before the end
    not_before: str | None = None  # a retry's Retry-After: no run before
    error: str | None = None  # exception type of a failed invocation (no message: it may hold data)

    @property
    def progress(self) -> float | None:
        """Share of the ids merged, estimated from the last snapshot's size (None: first sync)."""
        if self.status == "done":
            return 1.0
        if not self.base_members:
            return None
        return round(min(self.counts.merged / self.base_members, 0.99), 4)

    def as_dict(self) -> dict[str, Any]:
        return {"destination_id": self.destination_id, "audience_id": self.audience_id, "status": self.status,
                "sync_id": self.sync_id, "started_at": self.started_at, "updated_at": self.updated_at,
                "finished_at": self.finished_at, "last_success_at": self.last_success_at,
                "snapshot_key": self.snapshot_key, "base_snapshot_key": self.base_snapshot_key,
                "cursor_set": self.cursor is not None, "parts": self.parts, "counts": self.counts.as_dict(),
                "failures": list(self.failures), "progress": self.progress, "stopped": self.stopped,
                "not_before": self.not_before, "error": self.error}


# --- ports ------------------------------------------------------------------------------------


class MemberSource(Protocol):
    def members(self, audience_id: str, after: str | None) -> Iterator[str]:
        """The audience's current members after ``after`` (exclusive), strictly increasing."""
        ...


class SnapshotStore(Protocol):
    def read(self, key: str, after: str | None) -> Iterator[str]:
        """A finished snapshot's ids after ``after``, in order."""
        ...

    def size(self, key: str) -> int: ...

    def write_part(self, destination_id: str, audience_id: str, sync_id: str, number: int,
                   ids: Iterable[str]) -> None:
        """Part ``number`` (from 1) of a sync's snapshot, the ids in order (an iterable that
        may be longer than memory should hold); written again if it exists."""
        ...

    def finish(self, destination_id: str, audience_id: str, sync_id: str, parts: int, members: int) -> str:
        """Write the manifest of parts 1..``parts``; returns the snapshot's key."""
        ...

    def prune(self, destination_id: str, audience_id: str, keep: Collection[str]) -> int:
        """Delete the snapshots of syncs not in ``keep`` (sync ids); returns how many."""
        ...


class LeaseLost(RuntimeError):
    """Another invocation holds the sync now: stop at once, without writing."""


class SyncStateStore(Protocol):
    def load(self, destination_id: str, audience_id: str) -> SyncState | None: ...

    def acquire(self, destination_id: str, audience_id: str, owner: str, until: datetime,
                now: datetime) -> bool:
        """Take the lease if free or expired (creating the item if needed)."""
        ...

    def save(self, state: SyncState, owner: str) -> None:
        """Write the state while ``owner`` holds the lease, else raise ``LeaseLost``."""
        ...

    def release(self, destination_id: str, audience_id: str, owner: str) -> None: ...


Deliver = Callable[[Sequence[OutboundMessage]], list[Outcome]]


@dataclass(frozen=True)
class SyncResult:
    """What one invocation did: ``done``, ``stopped`` (resume later), ``busy`` (another
    invocation holds the lease) or ``waiting`` (a retry's ``not_before`` is ahead)."""

    outcome: Literal["done", "stopped", "busy", "waiting"]
    sync_id: str | None = None
    counts: SyncCounts = field(default_factory=SyncCounts)  # this invocation's
    reason: str | None = None
    snapshot_key: str | None = None


class _Stop(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 1] + "…"


class BatchSync:
    """Runs syncs of (destination, audience) pairs over the ports; see the module docstring."""

    def __init__(self, members: MemberSource, snapshots: SnapshotStore, states: SyncStateStore, *,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 clock: Callable[[], float] = time.monotonic, part_members: int = PART_MEMBERS,
                 span_members: int = SPAN_MEMBERS, memory_ids: int = MEMORY_IDS,
                 checkpoint_seconds: float = CHECKPOINT_SECONDS, stop_margin_s: float = STOP_MARGIN_S,
                 owner: str | None = None) -> None:
        if part_members < 1 or span_members < 1 or memory_ids < 1:
            raise ValueError("part_members, span_members and memory_ids must be at least 1")
        self._members = members
        self._snapshots = snapshots
        self._states = states
        self._now = now
        self._clock = clock
        self._part_members = part_members
        self._span_members = span_members
        self._memory_ids = memory_ids
        self._checkpoint_seconds = checkpoint_seconds
        self._stop_margin_s = stop_margin_s
        self._owner = owner or uuid.uuid4().hex

    def run(self, destination_id: str, audience_id: str, batch_size: int, deliver: Deliver,
            deadline: Callable[[], float]) -> SyncResult:
        """Start or continue the sync; work until it is done, a chunk must be retried, or
        ``deadline()`` (seconds left) nears ``stop_margin_s``."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        seen = self._states.load(destination_id, audience_id)
        if seen is not None and seen.status != "done" and seen.not_before \
                and parse_iso(seen.not_before) > self._now():
            return SyncResult("waiting", seen.sync_id, reason="a retry's delay has not passed")
        now = self._now()
        until = now + timedelta(seconds=min(max(deadline(), 0.0), 900.0) + 60)
        if not self._states.acquire(destination_id, audience_id, self._owner, until, now):
            return SyncResult("busy", seen.sync_id if seen else None, reason="another invocation holds the lease")
        run = _Run(self, destination_id, audience_id, batch_size, deliver, deadline)
        try:
            return run.work(self._states.load(destination_id, audience_id))
        except LeaseLost:
            return SyncResult("busy", run.state.sync_id if run.state else None, run.done_here,
                              reason="lease lost")
        except Exception as exc:
            if run.state is not None:
                with contextlib.suppress(Exception):  # the original exception matters more
                    self._states.save(replace(run.state, status="failed", error=type(exc).__name__,
                                              updated_at=iso(self._now())), self._owner)
            raise
        finally:
            self._states.release(destination_id, audience_id, self._owner)


class _Run:
    """One invocation's work on one sync (the merge loop and its checkpoints)."""

    def __init__(self, sync: BatchSync, destination_id: str, audience_id: str, batch_size: int,
                 deliver: Deliver, deadline: Callable[[], float]) -> None:
        self.s = sync
        self.destination_id = destination_id
        self.audience_id = audience_id
        self.batch_size = batch_size
        self.deliver = deliver
        self.deadline = deadline
        self.state: SyncState | None = None
        self.done_here = SyncCounts()  # checkpointed by this invocation
        # The segment since the last checkpoint:
        self.buffer = IdBuffer(sync._memory_ids)  # ids merged, in order (candidates for the new snapshot)
        self.drop: set[str] = set()  # ids of the buffer not in the new snapshot (removed, failed adds)
        self.pending: list[Change] = []  # the chunk being filled
        self.mark: tuple[str | None, int] = (None, 0)  # (cursor, buffer length) before the pending chunk
        self.cursor: str | None = None
        self.counts = SyncCounts()  # the segment's
        self.failures: list[str] = []
        self.saved_at = 0.0

    def _start(self, previous: SyncState | None) -> SyncState:
        now = iso(self.s._now())
        if previous is not None and previous.status != "done":
            return replace(previous, status="running", stopped=None, not_before=None, error=None, updated_at=now)
        base = previous.snapshot_key if previous else None
        state = SyncState(
            destination_id=self.destination_id, audience_id=self.audience_id, status="running",
            sync_id=new_sync_id(self.s._now()), started_at=now, updated_at=now, base_snapshot_key=base,
            base_members=self.s._snapshots.size(base) if base else None,
            snapshot_key=base, last_success_at=previous.last_success_at if previous else None)
        self.s._states.save(state, self.s._owner)
        return state

    def work(self, previous: SyncState | None) -> SyncResult:
        state = self.state = self._start(previous)
        self.cursor = state.cursor
        self.failures = list(state.failures)
        self.saved_at = self.s._clock()
        current = self.s._members.members(self.audience_id, state.cursor)
        before: Iterable[str] = self.s._snapshots.read(state.base_snapshot_key, state.cursor) \
            if state.base_snapshot_key else ()
        try:
            return self._merge(state, current, before)
        finally:
            self.buffer.close()

    def _merge(self, state: SyncState, current: Iterable[str], before: Iterable[str]) -> SyncResult:
        try:
            for n, (pid, transition) in enumerate(merge_diff(current, before)):
                if n % DEADLINE_CHECK_EVERY == 0:
                    self._check_deadline()
                if transition is not None:
                    if not self.pending:
                        self.mark = (self.cursor, len(self.buffer))
                    self.pending.append(Change(pid, transition))
                self.buffer.append(pid)
                self.cursor = pid
                # A full chunk goes out; so does one spanning span_members ids (a sparse
                # diff): the ids a chunk spans wait in the buffer (on disk past memory_ids)
                # until it is delivered, so the buffer stays under part_members +
                # max(span_members, batch_size) ids.
                if self.pending and (len(self.pending) >= self.batch_size or len(self.buffer) - self.mark[1]
                                     >= max(self.s._span_members, self.batch_size)):
                    self._deliver()
                if not self.pending and len(self.buffer) >= self.s._part_members:
                    self._checkpoint()
            if self.pending:
                self._deliver()
        except _Stop as stop:
            self._rollback()
            not_before = None
            if stop.retry_after_s is not None:
                not_before = iso(self.s._now() + timedelta(seconds=stop.retry_after_s))
            self._checkpoint(stopped=stop.reason, not_before=not_before)
            return SyncResult("stopped", state.sync_id, self.done_here, stop.reason)
        self._checkpoint()
        return self._complete()

    def _check_deadline(self) -> None:
        if self.deadline() <= self.s._stop_margin_s:
            raise _Stop("deadline")

    def _rollback(self) -> None:
        """Forget the pending chunk: the checkpoint goes just before it."""
        if self.pending:
            cursor, length = self.mark
            self.buffer.truncate(length)
            self.cursor = cursor
            self.pending = []

    def _deliver(self) -> None:
        self._check_deadline()
        assert self.state is not None
        chunk, sync_id = self.pending, self.state.sync_id
        messages = [sync_message(self.destination_id, self.audience_id, sync_id, self.state.started_at, c)
                    for c in chunk]
        outcomes = self.deliver(messages)
        if len(outcomes) != len(messages):
            raise ValueError(f"deliver returned {len(outcomes)} outcomes for {len(messages)} messages")
        retries = [o for o in outcomes if o.verdict == "retry"]
        if retries:
            waits = [o.retry_after_s for o in retries if o.retry_after_s is not None]
            raise _Stop(f"retry: {_short(retries[0].reason)}", max(waits) if waits else None)
        adds = removes = failed = 0
        for change, outcome in zip(chunk, outcomes, strict=True):
            if outcome.verdict == "delivered":
                if change.transition == "entered":
                    adds += 1
                else:
                    removes += 1
                    self.drop.add(change.profile_id)
            else:
                failed += 1
                if len(self.failures) < MAX_FAILURE_REASONS:
                    self.failures.append(_short(f"{change.transition}: {outcome.reason}"))
                if change.transition == "entered":
                    self.drop.add(change.profile_id)
        c = self.counts
        self.counts = replace(c, adds=c.adds + adds, removes=c.removes + removes, failed=c.failed + failed,
                              chunks=c.chunks + 1)
        self.pending = []
        if self.s._clock() - self.saved_at >= self.s._checkpoint_seconds:
            self._checkpoint()

    def _checkpoint(self, stopped: str | None = None, not_before: str | None = None) -> None:
        """Write the segment's ids (every change in it resolved) as the next part of the new
        snapshot, then the state (cursor, counts)."""
        assert self.state is not None and not self.pending
        state = self.state
        settled, cursor = len(self.buffer), self.cursor
        kept = settled - len(self.drop)  # every dropped id is one of the buffer's (a resolved change)
        parts = state.parts
        if kept:
            parts += 1
            self.s._snapshots.write_part(self.destination_id, self.audience_id, state.sync_id, parts,
                                         (pid for pid in self.buffer if pid not in self.drop))
        segment = replace(self.counts, merged=settled, members=kept)
        state = replace(state, cursor=cursor, parts=parts, counts=state.counts.plus(segment),
                        failures=tuple(self.failures), updated_at=iso(self.s._now()), stopped=stopped,
                        not_before=not_before)
        self.s._states.save(state, self.s._owner)
        self.state = state
        self.done_here = self.done_here.plus(segment)
        self.buffer.clear()
        self.drop, self.counts = set(), SyncCounts()
        self.saved_at = self.s._clock()

    def _complete(self) -> SyncResult:
        assert self.state is not None
        state = self.state
        key = self.s._snapshots.finish(self.destination_id, self.audience_id, state.sync_id, state.parts,
                                       state.counts.members)
        now = iso(self.s._now())
        done = replace(state, status="done", snapshot_key=key, last_success_at=now, finished_at=now,
                       updated_at=now, stopped=None, not_before=None, error=None)
        self.s._states.save(done, self.s._owner)
        self.state = done
        keep = {state.sync_id} | ({_sync_id_of(state.base_snapshot_key)} if state.base_snapshot_key else set())
        self.s._snapshots.prune(self.destination_id, self.audience_id, keep)
        return SyncResult("done", state.sync_id, self.done_here, snapshot_key=key)


class IdBuffer:
    """The ids merged since the last checkpoint, in order: a list of at most ``memory_ids``
    ids, the older ones in a temporary file (one id a line) once there are more."""

    def __init__(self, memory_ids: int) -> None:
        self._memory_ids = memory_ids
        self._tail: list[str] = []
        self._file: Any = None  # a binary temporary file, opened at the first spill
        self._spilled = 0  # ids in the file

    def __len__(self) -> int:
        return self._spilled + len(self._tail)

    def append(self, pid: str) -> None:
        self._tail.append(pid)
        if len(self._tail) >= self._memory_ids:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="cdp-sync-")  # noqa: SIM115 (closed by close())
            self._file.seek(0, 2)
            self._file.write(("\n".join(self._tail) + "\n").encode("utf-8"))
            self._spilled += len(self._tail)
            self._tail = []

    def __iter__(self) -> Iterator[str]:
        if self._spilled:
            self._file.flush()
            self._file.seek(0)
            for line in self._file:  # the file holds exactly the spilled ids (see truncate)
                yield line.decode("utf-8").rstrip("\n")
        yield from self._tail

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` ids."""
        if length >= self._spilled:
            del self._tail[length - self._spilled:]
            return
        self._file.flush()
        self._file.seek(0)
        offset = 0
        for _ in range(length):
            offset += len(self._file.readline())
        self._file.truncate(offset)
        self._spilled, self._tail = length, []

    def clear(self) -> None:
        self.truncate(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._spilled, self._tail = 0, []


def _sync_id_of(snapshot_key: str) -> str:
    """The sync id in a snapshot key (``snapshots/<destination>/<audience>/<sync id>/manifest.json``)."""
    return snapshot_key.rstrip("/").split("/")[-2]
