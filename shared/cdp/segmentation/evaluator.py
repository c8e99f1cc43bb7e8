"""``SegmentEvaluator``: one identity-table stream record in, memberships and events out.

For each profile change (``cdp.segmentation.membership.profile_change``): read the
profile's stored memberships, decide (``decide``), write the decisions conditionally,
then put ``Audience Entered`` / ``Audience Exited`` onto the event stream (live profiles
only: a merged-away profile's exits are recorded in the table, without events). Memberships
are written before the events: if the put fails, the record fails and is delivered
again, and the stored transition (``changed_version`` = this version) is replayed as the
same event (same messageId), so no event is lost and none is counted twice.

The adapters are ports (small protocols) so unit tests can pass fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cdp.ingest import StreamRecord, accepted_record
from cdp.observability import logger
from cdp.segmentation.audience_events import AUDIENCE_SOURCE_ID, audience_event, person_of
from cdp.segmentation.catalog import Catalog
from cdp.segmentation.membership import (
    Decision,
    DependencyIndex,
    Membership,
    ProfileChange,
    account_change,
    accounts_of,
    decide,
    memberships_needed,
    profile_change,
)


class Memberships(Protocol):
    def of_profile(self, profile_id: str) -> dict[str, Membership]: ...

    def some_of_profile(self, profile_id: str, audience_ids: Iterable[str]) -> dict[str, Membership]: ...

    def apply(self, profile_id: str, decisions: Sequence[Decision],
              stored: dict[str, Membership]) -> list[Decision]: ...


class EventSink(Protocol):
    def put_records(self, records: list[StreamRecord]) -> None: ...


@dataclass
class EvaluationStats:
    profiles: int = 0
    entered: int = 0
    exited: int = 0
    replayed: int = 0
    skipped_events: int = 0  # transitions of profiles without a user or anonymous id
    account_members: int = 0  # members evaluated because their account's traits changed
    merged_exits: int = 0  # exits of merged-away profiles (recorded, no event)

    def as_metrics(self) -> dict[str, int]:
        return {"ProfilesEvaluated": self.profiles, "AudiencesEntered": self.entered,
                "AudiencesExited": self.exited, "AudienceEventsReplayed": self.replayed,
                "MergedProfileExits": self.merged_exits}


@dataclass
class SegmentEvaluator:
    catalog: Callable[[], Catalog]
    memberships: Memberships
    accounts: Callable[[Iterable[str]], Sequence[Mapping[str, Any]]]  # group ids -> their traits
    events: EventSink
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Touches an account's members (group id -> how many): its traits changed, so their
    # account audiences are re-evaluated through the stream (cdp.aws.profile_items).
    touch_members: Callable[[str], int] | None = None
    stats: EvaluationStats = field(default_factory=EvaluationStats)
    # Collect the events of a whole batch and put them at once (``flush_events``): one
    # Kinesis request per invocation instead of one per profile with a transition.
    defer_events: bool = False
    _pending_events: list[StreamRecord] = field(default_factory=list)
    # Memberships read for the batch (``prefetch``): profile id -> (audiences read, found).
    _prefetched: dict[str, tuple[set[str], dict[str, Membership]]] = field(default_factory=dict)
    _index: tuple[Catalog, DependencyIndex] | None = None

    def index(self, catalog: Catalog) -> DependencyIndex:
        """The dependency index, built again only when the catalog object changes."""
        if self._index is None or self._index[0] is not catalog:
            self._index = (catalog, DependencyIndex.of(catalog))
        return self._index[1]

    def process(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[Decision]:
        """Evaluate one profile item change (stream images in DynamoDB JSON); returns what was done."""
        change = profile_change(old, new)
        if change is None:
            activity = self.index(self.catalog()).activity
            group_id = account_change(old, new, activity, self.now() if activity else None)
            if group_id is not None:
                self._account_changed(group_id)
            return []
        return self._decide(change)

    def prefetch(self, images: Sequence[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]) -> None:
        """Read, for a whole batch at once, the memberships its changes touch (a few
        BatchGetItem requests instead of one per change). A profile appearing twice in the
        batch is read again for its later changes (its first one writes)."""
        self._prefetched = {}
        catalog = self.catalog()
        if not catalog.audiences:
            return
        index = self.index(catalog)
        wanted: dict[str, set[str]] = {}
        seen: set[str] = set()
        for old, new in images:
            change = profile_change(old, new)
            if change is None:
                continue
            needed = memberships_needed(change, catalog, index)
            if change.profile_id in seen:
                wanted.pop(change.profile_id, None)
                continue
            seen.add(change.profile_id)
            if needed:
                wanted[change.profile_id] = set(needed)
        fetch = getattr(self.memberships, "some_of_profiles", None)
        if wanted and fetch is not None:
            found = fetch(wanted)
            self._prefetched = {pid: (keys, found.get(pid, {})) for pid, keys in wanted.items()}

    def _account_changed(self, group_id: str) -> None:
        """An account's traits, or a member count an audience reads, changed: its members
        are touched, so the stream brings each back here with a new version and ``check``
        naming the account."""
        index = self.index(self.catalog())
        if not index.account_based or self.touch_members is None:
            return
        self.stats.account_members += self.touch_members(group_id)

    def _decide(self, change: ProfileChange) -> list[Decision]:
        catalog = self.catalog()
        index = self.index(catalog)
        if change.live and not catalog.audiences:
            return []
        self.stats.profiles += 1
        needed = memberships_needed(change, catalog, index)
        if needed is None:
            stored = self.memberships.of_profile(change.profile_id)
        elif not needed:
            return []  # the change touches no audience's inputs: nothing to read or decide
        elif (cached := self._prefetched.pop(change.profile_id, None)) is not None and needed <= cached[0]:
            stored = dict(cached[1])
        else:
            stored = self.memberships.some_of_profile(change.profile_id, needed)
        if not change.live and not stored:
            return []
        now = self.now()
        groups = accounts_of(change.new)
        decisions = decide(change, catalog, index, now, stored, accounts=lambda: self.accounts(groups))
        done = self.memberships.apply(change.profile_id, decisions, stored)
        self._emit(change, catalog, done)
        return done

    def _emit(self, change: ProfileChange, catalog: Catalog, done: Sequence[Decision]) -> None:
        transitions = [d for d in done if d.transition is not None]
        if not transitions:
            return
        if not change.live:
            # A merged-away profile's exits are recorded (the memberships table's stream
            # tells activation), but no event is emitted: its ids now resolve to the
            # survivor, whose history would show an exit the person did not make.
            self.stats.merged_exits += len(transitions)
            return
        person = person_of(change.ids)
        if person is None:
            self.stats.skipped_events += len(transitions)
            logger.warning("audience events skipped: profile has no user or anonymous id",
                           extra={"profile_id": change.profile_id, "transitions": len(transitions)})
            return
        records = []
        for decision in transitions:
            assert decision.transition is not None
            definition = catalog.audiences.get(decision.audience_id)
            event = audience_event(audience_id=decision.audience_id,
                                   audience_name=definition.name if definition else decision.audience_id,
                                   profile_id=change.profile_id, person=person, transition=decision.transition,
                                   version=decision.profile_version, at=decision.at)
            records.append(accepted_record(AUDIENCE_SOURCE_ID, event, event))
            if decision.replay:
                self.stats.replayed += 1
            elif decision.transition == "entered":
                self.stats.entered += 1
            else:
                self.stats.exited += 1
        if self.defer_events:
            self._pending_events.extend(records)
        else:
            self.events.put_records(records)

    def flush(self) -> tuple[int, int]:
        """Write the batch's buffered memberships, then put its deferred events; returns
        (memberships written, events put). Memberships go first: if the events fail, the
        batch is delivered again and its stored transitions replay as the same events."""
        flush = getattr(self.memberships, "flush", None)
        written = flush() if flush is not None else 0
        return written, self.flush_events()

    def discard(self) -> None:
        """Drop what the batch buffered (it is delivered again and decided again)."""
        discard = getattr(self.memberships, "discard", None)
        if discard is not None:
            discard()
        self.discard_events()

    def flush_events(self) -> int:
        """Put the events deferred so far (one request per 500); returns how many."""
        records, self._pending_events = self._pending_events, []
        if records:
            self.events.put_records(records)
        return len(records)

    def discard_events(self) -> None:
        """Drop deferred events (their records are retried, and replay them)."""
        self._pending_events = []
