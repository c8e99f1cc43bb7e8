"""The backfill: the part of a new aggregate state that the stream consumer never sees.

A spec registered at some time is folded by the stream consumer for the events received
at or after its ``live_from`` (``cdp.segmentation.catalog``); the events received before
it are in the history (the events table, one partition per ``user_id`` or
``anonymous_id``, ``cdp.aws.event_store``). The backfill reads each live profile's
history partitions, folds their events received **before** ``live_from`` into a state
from scratch and adds it to the profile's stored state (aggregates add up, so the two
halves combine as a profile merge does). The cut by ``receivedAt`` is the consumer's own
(``tallies``), so no event is counted by both and none by neither.

**Exactly once, per history partition.** The stored state of a spec carries ``f``, the
tags (:func:`partition_tag`) of the history partitions whose earlier events are in it::

    {"k": "count", "g": "<gen>", "b": {...}, "f": ["3f1c0a9b2e", ...]}

A partition already tagged is never folded again, so a resumed or repeated backfill
changes nothing; a profile merge unites the tags with the buckets (the histories are
disjoint), so a partition of a profile merged away during the backfill is filled once,
into whichever profile holds it when it is reached. A partition whose earlier events add
nothing is not tagged and not written (folding it again adds nothing either).

This module is the pure part; ``cdp.aws.backfill_store`` scans the tables and writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cdp.segmentation import aggregates
from cdp.segmentation.aggregates import AggregateState
from cdp.segmentation.catalog import ActiveSpec
from cdp.segmentation.tallies import Tallies, _instant_key, _received

FILLED = "f"
# Identifier types whose value names a history partition (``event_store.person_key``).
PARTITION_PREFIXES = {"user_id": "u#", "anonymous_id": "a#"}
TAG_LENGTH = 10


def partition_of(ident_key: str) -> str | None:
    """The history partition of an identifier item's key (``ident#user_id:u1`` -> ``u#u1``).

    The identity graph and the events table bound long values with the same function
    (``cdp.keys.bounded``), so the key part carries over as it is.
    """
    type_name, _, value = ident_key.removeprefix("ident#").partition(":")
    prefix = PARTITION_PREFIXES.get(type_name)
    return prefix + value if prefix and value and ident_key.startswith("ident#") else None


def partition_ident_key(partition: str) -> str | None:
    """The identifier item of a history partition (``u#u1`` -> ``ident#user_id:u1``); None
    for keys of the events table that are not history partitions."""
    for type_name, prefix in PARTITION_PREFIXES.items():
        if partition.startswith(prefix) and len(partition) > len(prefix):
            return f"ident#{type_name}:{partition.removeprefix(prefix)}"
    return None


def history_partitions(ident_keys: Iterable[str]) -> list[str]:
    """The history partitions of a profile's identifiers (sorted, without repeats)."""
    return sorted({p for key in ident_keys if (p := partition_of(key)) is not None})


def partition_tag(partition: str) -> str:
    """Short stable tag of a history partition, as stored in ``f``."""
    return hashlib.sha256(partition.encode("utf-8")).hexdigest()[:TAG_LENGTH]


def before_live(active: ActiveSpec, event: Mapping[str, Any]) -> bool:
    """Whether the event is the backfill's (received before ``live_from``), by the consumer's rule."""
    return _instant_key(_received(event)) < _instant_key(active.live_from)


def fold_history(specs: Mapping[str, ActiveSpec], events: Iterable[Mapping[str, Any]],
                 now: datetime) -> dict[str, AggregateState]:
    """Per spec, the state of the events received before its ``live_from`` that it selects,
    pruned at ``now``; specs no event contributes to are left out."""
    states: dict[str, AggregateState] = {}
    for event in events:
        for spec_id, active in specs.items():
            if before_live(active, event) and aggregates.selects(active.spec, dict(event)):
                state = states.get(spec_id) or aggregates.empty(active.spec)
                states[spec_id] = aggregates.fold(state, dict(event))
    pruned = {spec_id: aggregates.prune(state, now) for spec_id, state in states.items()}
    return {spec_id: state for spec_id, state in pruned.items() if state.buckets}


def _newer(stored: Mapping[str, Any] | None, active: ActiveSpec) -> bool:
    return stored is not None and str(stored.get("g")) > active.gen


def filled_tags(stored: Mapping[str, Any] | None, active: ActiveSpec) -> frozenset[str]:
    """The partitions (tags) already filled into a stored state of the spec's generation."""
    if stored is None or stored.get("g") != active.gen:
        return frozenset()
    return frozenset(stored.get(FILLED) or ())


def unfilled(tallies: Tallies, specs: Mapping[str, ActiveSpec], partitions: Iterable[str]) -> list[str]:
    """The partitions some spec has not filled yet (a state of a newer generation needs nothing)."""
    wanted = []
    for partition in partitions:
        tag = partition_tag(partition)
        for spec_id, active in specs.items():
            stored = tallies.states.get(spec_id)
            if not _newer(stored, active) and tag not in filled_tags(stored, active):
                wanted.append(partition)
                break
    return wanted


def add_history(tallies: Tallies, specs: Mapping[str, ActiveSpec],
                fills: Mapping[str, Mapping[str, AggregateState]], now: datetime) -> Tallies:
    """The tallies with each partition's earlier events added to the states that lack them.

    ``fills``: partition -> spec id -> :func:`fold_history` of that partition. Per spec,
    the partitions not tagged yet are added and tagged; a state of an older generation
    is replaced (the consumer would discard it too), one of a newer generation is left
    alone. Returns ``tallies`` itself when nothing would change, so callers can skip
    the write.
    """
    states = dict(tallies.states)
    changed = False
    for spec_id, active in specs.items():
        stored = states.get(spec_id)
        if _newer(stored, active):
            continue
        done = filled_tags(stored, active)
        new = [p for p in fills if partition_tag(p) not in done]
        parts = [fills[p][spec_id] for p in new if spec_id in fills[p]]
        if not parts:
            continue  # nothing earlier to add: nothing to tag either
        added = parts[0]
        for part in parts[1:]:
            added = aggregates.merge(added, part)
        current = aggregates.from_json(active.spec, stored) if stored is not None and stored.get("g") == active.gen \
            else aggregates.empty(active.spec)
        combined = aggregates.prune(aggregates.merge(current, added), now)
        states[spec_id] = {"k": active.spec.kind, "g": active.gen, **aggregates.to_json(combined),
                           FILLED: sorted(done | {partition_tag(p) for p in new})}
        changed = True
    return Tallies(states, dict(tallies.marks)) if changed else tallies


@dataclass(frozen=True)
class BackfillProgress:
    """Where a backfill run stands (``cdp.aws.backfill_store.backfill_status``).

    ``estimate`` is DynamoDB's ``ItemCount`` of the identity table when the run started
    (refreshed about every six hours by DynamoDB, so an estimate), and ``scanned``
    counts the identity items read, profiles and identifier items alike: ``progress``
    is their ratio, capped below 1 until every segment is done.
    """

    run_id: str
    specs: Mapping[str, str]  # spec id -> gen
    status: str  # running | done | superseded
    segments_total: int
    segments_done: int
    scanned: int
    profiles: int  # live profiles examined
    written: int  # profiles and accounts whose state the backfill changed
    estimate: int
    started_at: str
    updated_at: str
    finished_at: str | None

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        if self.estimate <= 0:
            return 0.0
        return min(self.scanned / self.estimate, 0.99)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "specs": dict(self.specs), "status": self.status,
                "segments_total": self.segments_total, "segments_done": self.segments_done,
                "scanned": self.scanned, "profiles": self.profiles, "written": self.written,
                "estimate": self.estimate, "progress": round(self.progress, 4), "started_at": self.started_at,
                "updated_at": self.updated_at, "finished_at": self.finished_at}
