"""A profile's aggregate states as stored on its item, folded exactly once per event.

The profile item (``prof#<id>``, or the home identifier item of a home profile) carries
an ``agg`` attribute, JSON::

    {"s": {"<aggregate id>": {"k": "count", "g": "<gen>", "b": {"2026-11-28": [3]}}},
     "m": {"<stream key>": ["<sequence number>", "2026-11-28"]}}

``s`` holds one state per aggregate spec (``cdp.segmentation.aggregates`` stored form
plus the spec's kind ``k`` and generation ``g``, see ``cdp.segmentation.catalog``, and
``f``: the history partitions whose earlier events the backfill added,
``cdp.segmentation.backfill``; folds keep it and merges unite it).

**Exactly once.** Aggregates add up, so folding an event twice would count it twice;
and a batch can be delivered again after its profile writes landed (a crash, a timeout,
a retried batch after a later write failed). ``m`` holds, per stream key (a hash of the
Kinesis shard and partition key), the highest sequence number folded into this profile.
Kinesis delivers one partition key's records in order, also with a parallelization
factor above one, so an event at or below its key's mark was folded before and is
skipped. A merge keeps the highest mark of each key. Marks older than
:data:`MARK_DAYS` days are dropped: the stream keeps records for a day, so no redelivery
can be older.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cdp.identity.profile_state import state_from_json
from cdp.segmentation import aggregates
from cdp.segmentation.aggregates import AggregateState
from cdp.segmentation.catalog import ActiveSpec, Catalog
from cdp.segmentation.evaluate import Facts

MARK_DAYS = 8
# Key of a stored state listing the history partitions the backfill added (cdp.segmentation.backfill).
FILLED = "f"


@dataclass(frozen=True)
class StreamPosition:
    """Where an event came from: the stream key (shard and partition key) and sequence number."""

    key: str
    sequence: int

    @staticmethod
    def of(shard_id: str, partition_key: str, sequence_number: str) -> StreamPosition:
        key = hashlib.sha256(f"{shard_id}|{partition_key}".encode()).hexdigest()[:12]
        return StreamPosition(key, int(sequence_number))


@dataclass(frozen=True)
class Tallies:
    """The decoded ``agg`` attribute: stored states (raw) and marks."""

    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    marks: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (sequence, day)


def tallies_from_json(text: str | None) -> Tallies:
    if not text:
        return Tallies()
    data = json.loads(text)
    return Tallies(dict(data.get("s") or {}), {k: (v[0], v[1]) for k, v in (data.get("m") or {}).items()})


def tallies_to_json(tallies: Tallies) -> str:
    return json.dumps({"s": tallies.states, "m": {k: list(v) for k, v in tallies.marks.items()}},
                      separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _state(active: ActiveSpec, stored: dict[str, Any] | None) -> AggregateState:
    if stored is None or stored.get("g") != active.gen:
        return aggregates.empty(active.spec)
    return aggregates.from_json(active.spec, stored)


def _stored(active: ActiveSpec, state: AggregateState) -> dict[str, Any]:
    return {"k": active.spec.kind, "g": active.gen, **aggregates.to_json(state)}


def _received(event: Mapping[str, Any]) -> str:
    return str(event.get("receivedAt") or event.get("timestamp") or "")


def _instant_key(iso: str) -> str:
    """Comparable form of an ISO instant (``Z`` or ``+00:00``, any fraction)."""
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


def fold_events(tallies: Tallies, specs: Mapping[str, ActiveSpec],
                events: Sequence[tuple[StreamPosition | None, Mapping[str, Any]]], now: datetime) -> Tallies:
    """The tallies with the events folded that this profile has not folded yet.

    Only events some live spec selects count (and leave a mark): the others change
    nothing, so a profile is written only when one of its states changes. An event
    without a stream position (a direct call, a test) is always folded. States of specs
    not in ``specs`` are kept as they are (another consumer may know a newer catalog);
    day buckets outside a sliding window at ``now`` are pruned.
    """
    marks = dict(tallies.marks)
    states = dict(tallies.states)
    folded: dict[str, AggregateState] = {}
    day = now.date().isoformat()
    live = [(spec_id, active, _instant_key(active.live_from)) for spec_id, active in specs.items()]
    for position, event in events:
        received = _instant_key(_received(event))
        targets = [(spec_id, active) for spec_id, active, live_from in live
                   if received >= live_from and aggregates.selects(active.spec, dict(event))]
        if not targets:
            continue
        if position is not None:
            mark = marks.get(position.key)
            if mark is not None and position.sequence <= int(mark[0]):
                continue  # folded into this profile before: a redelivery
            marks[position.key] = (str(position.sequence), day)
        for spec_id, active in targets:
            state = folded.get(spec_id) or _state(active, states.get(spec_id))
            folded[spec_id] = aggregates.fold(state, dict(event))
    for spec_id, state in folded.items():
        state = aggregates.prune(state, now)
        stored = _stored(specs[spec_id], state)
        previous = states.get(spec_id)
        if previous is not None and previous.get("g") == stored["g"] and previous.get(FILLED):
            stored[FILLED] = previous[FILLED]  # which history partitions the backfill added
        if state.buckets or stored.get(FILLED):
            states[spec_id] = stored
        else:
            states.pop(spec_id, None)
    cutoff = (now.date() - timedelta(days=MARK_DAYS)).isoformat()
    marks = {k: v for k, v in marks.items() if v[1] >= cutoff}
    return Tallies(states, marks)


def selected_by_any(specs: Mapping[str, ActiveSpec], event: Mapping[str, Any]) -> bool:
    """Whether some live spec selects the event (cheap test before keeping it for a fold)."""
    received = _instant_key(_received(event))
    return any(received >= _instant_key(a.live_from) and aggregates.selects(a.spec, dict(event))
               for a in specs.values())


def merge_tallies(a: Tallies, b: Tallies) -> Tallies:
    """Two profiles' tallies as one: states combine (disjoint histories), marks keep the highest."""
    states = dict(a.states)
    for spec_id, theirs in b.states.items():
        ours = states.get(spec_id)
        if ours is None or ours.get("g") != theirs.get("g"):
            # Different generations: keep the newer one (the older missed events).
            if ours is None or str(theirs.get("g")) > str(ours.get("g")):
                states[spec_id] = theirs
            continue
        combined = {"k": ours["k"], "g": ours["g"], **aggregates.merge_stored(ours["k"], ours, theirs)}
        filled = sorted({*ours.get(FILLED, ()), *theirs.get(FILLED, ())})
        if filled:
            combined[FILLED] = filled
        states[spec_id] = combined
    marks = dict(a.marks)
    for key, (sequence, day) in b.marks.items():
        current = marks.get(key)
        if current is None or int(sequence) > int(current[0]):
            marks[key] = (sequence, day)
        elif int(sequence) == int(current[0]):
            marks[key] = (sequence, max(day, current[1]))
    return Tallies(states, marks)


def aggregate_states(tallies: Tallies, specs: Mapping[str, ActiveSpec]) -> dict[str, AggregateState]:
    """The states of the active specs (a missing or outdated state reads as empty)."""
    return {spec_id: _state(active, tallies.states.get(spec_id)) for spec_id, active in specs.items()}


def computed_values(catalog: Catalog, states: Mapping[str, AggregateState], now: datetime) -> dict[str, Any]:
    """Each computed trait's value at ``now`` (traits whose spec is not kept yet are left out)."""
    values: dict[str, Any] = {}
    for trait_id, definition in catalog.computed_traits.items():
        state = states.get(definition.aggregate.aggregate_id())
        if state is not None:
            values[trait_id] = aggregates.value(state, now)
    return values


def _attr(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return value.get("S") if isinstance(value, dict) else None


def facts_from_item(item: Mapping[str, Any], catalog: Catalog, now: datetime,
                    accounts: Sequence[Mapping[str, Any]] = (), audiences: Set[str] = frozenset()) -> Facts:
    """What the evaluator knows of a profile, from its item (DynamoDB attribute-value form,
    as ``GetItem`` returns it and as a stream image carries it)."""
    state = state_from_json(_attr(item, "state"))
    tallies = tallies_from_json(_attr(item, "agg"))
    states = aggregate_states(tallies, catalog.specs)
    return Facts(traits={name: t.value for name, t in state.traits.items()},
                 computed=computed_values(catalog, states, now), aggregates=states,
                 accounts=accounts, audiences=audiences)


def profile_of_item(item: Mapping[str, Any]) -> tuple[str, bool] | None:
    """The profile id an identity-table item stands for, and whether it is live.

    ``prof#<id>`` items, and home identifier items (``solo``); None for anything else
    (a plain identifier pointer, an account, a settings item).
    """
    key = _attr(item, "pk") or ""
    if key.startswith("prof#"):
        return key.removeprefix("prof#"), _attr(item, "status") == "live"
    if key.startswith("ident#") and "solo" in item:
        profile_id = _attr(item, "profile_id")
        return (profile_id, True) if profile_id else None
    return None

