"""Incremental, time-bucketed aggregate state of one profile for one aggregate spec.

One :class:`AggregateState` exists per computed trait (keyed by the trait's id) and per
event condition (keyed by ``EventCondition.aggregate().aggregate_id()``, a hash of the
canonical JSON of its selector and window: two audiences with the same event condition
share one state).

**Buckets.** A spec with a sliding window (``{"days": N}``) keeps one bucket per UTC day
of the events' ``timestamp``. A spec over all time, or between two fixed dates, keeps a
single bucket ``"*"`` (events outside the dates are not folded): it never needs pruning.

**Window rule.** ``value(state, now)`` with a window of N days reads the buckets of the
UTC day of ``now`` and of the N - 1 days before it; events dated after ``now``'s day are
not counted. So an event of 2026-11-22 10:00 is in a 7-day window until the end of
2026-11-28 (UTC) and out from 2026-11-29 00:00: windows are exact to the day.

**Merge semantics** (``merge`` is commutative and associative; ``fold`` is merge with a
one-event state): counts and sums add; min and max; first and last by (timestamp,
messageId), then by value; most frequent by the summed per-value counts, ties broken by
the smallest canonical JSON of the value; unique values as a set, capped at
:data:`UNIQUE_CAP` (the smallest values by canonical JSON are kept, so the cap is
deterministic too; ``unique_count`` then reads at most the cap); average = sum / count.
Sums are exact decimal sums of the numbers' shortest text (e.g. 19.99), so any order of
folding and merging gives the same state.

**Not idempotent.** Counts and sums add: folding an event twice counts it twice. The
pipeline feeds each event once (it dedupes upstream, in the events table), and profile
merges combine the states of distinct profiles, whose histories are disjoint.

**Which events contribute.** ``count``: every selected event. ``sum``, ``average``,
``min``, ``max``: events whose property is a number (booleans are not). ``first``,
``last``: events that have the property (not null). ``most_frequent``, ``unique``,
``unique_count``: events whose property is a string, number or boolean.

**Stored form** (``to_json``): ``{"b": {"2026-11-28": record}}`` where a record is
``[n]`` (count), ``[n, sum]`` (sum, average), ``[x]`` (min, max), ``[value, timestamp,
messageId]`` (first, last), ``{value_json: n}`` (most frequent), ``[value_json, ...]``
(unique). A sum that a JSON number cannot carry exactly is stored as a string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any

from cdp.segmentation.definitions import AggregateSpec, BetweenWindow, DaysWindow, EventSelector
from cdp.segmentation.predicates import MISSING, lookup, passes, to_utc

UNIQUE_CAP = 1_000
ALL_TIME = "*"
_EXACT = Context(prec=60)

Record = Any  # one bucket's record, in the stored form's shape (sums as Decimal)


@dataclass(frozen=True)
class AggregateState:
    """The buckets of one aggregate spec for one profile (treat as immutable)."""

    spec: AggregateSpec
    buckets: dict[str, Record] = field(default_factory=dict)


def empty(spec: AggregateSpec) -> AggregateState:
    return AggregateState(spec)


def canonical(value: Any) -> str:
    """The canonical JSON of a value: how unique and most frequent values are keyed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_time(event: dict[str, Any]) -> datetime:
    """The event's ``timestamp`` (``receivedAt`` when absent), in UTC."""
    raw = event.get("timestamp") or event.get("receivedAt")
    if isinstance(raw, datetime):
        return raw.astimezone(UTC) if raw.tzinfo else raw.replace(tzinfo=UTC)
    if not isinstance(raw, str):
        raise ValueError("event has no timestamp")
    return to_utc(raw)


def selects(spec: EventSelector, event: dict[str, Any]) -> bool:
    """Whether the event is of the spec's type and name and passes its property filters."""
    if event.get("type") != spec.event_type:
        return False
    if spec.event is not None:
        name = event.get("event") if spec.event_type == "track" else event.get("name")
        if name != spec.event:
            return False
    properties = event.get("properties") or {}
    return all(passes(f, lookup(properties, f.property)) for f in spec.where)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _decimal(value: int | float | str) -> Decimal:
    return Decimal(value) if isinstance(value, int | str) else Decimal(repr(value))


def _record(spec: AggregateSpec, event: dict[str, Any], at: datetime) -> Record | None:
    """The one-event record, or None when the event does not contribute."""
    kind = spec.kind
    if kind == "count":
        return [1]
    assert spec.property is not None
    value = lookup(event.get("properties") or {}, spec.property)
    if value is MISSING or value is None:
        return None
    if kind in ("sum", "average"):
        return [1, _decimal(value)] if _number(value) else None
    if kind in ("min", "max"):
        return [value] if _number(value) else None
    if kind in ("first", "last"):
        return [value, at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), str(event.get("messageId") or "")]
    if not isinstance(value, str | int | float | bool):
        return None
    if kind == "most_frequent":
        return {canonical(value): 1}
    return [canonical(value)]  # unique, unique_count


def _order_key(record: Record) -> tuple[str, str, str]:
    return record[1], record[2], canonical(record[0])


def _combine(kind: str, a: Record, b: Record) -> Record:
    if kind == "count":
        return [a[0] + b[0]]
    if kind in ("sum", "average"):
        return [a[0] + b[0], _EXACT.add(a[1], b[1])]
    if kind == "min":
        return [min(a[0], b[0])]
    if kind == "max":
        return [max(a[0], b[0])]
    if kind == "first":
        return min(a, b, key=_order_key)
    if kind == "last":
        return max(a, b, key=_order_key)
    if kind == "most_frequent":
        counts = dict(a)
        for key, n in b.items():
            counts[key] = counts.get(key, 0) + n
        return counts
    return sorted(set(a) | set(b))[:UNIQUE_CAP]


def _bucket_key(spec: AggregateSpec, at: datetime) -> str | None:
    window = spec.window
    if isinstance(window, DaysWindow):
        return at.date().isoformat()
    if isinstance(window, BetweenWindow) and not window.start <= at.date() <= window.end:
        return None
    return ALL_TIME


def fold(state: AggregateState, event: dict[str, Any]) -> AggregateState:
    """The state with one more event (a no-op if the spec does not select it)."""
    spec = state.spec
    if not selects(spec, event):
        return state
    at = event_time(event)
    key = _bucket_key(spec, at)
    record = _record(spec, event, at) if key is not None else None
    if key is None or record is None:
        return state
    buckets = dict(state.buckets)
    current = buckets.get(key)
    buckets[key] = record if current is None else _combine(spec.kind, current, record)
    return AggregateState(spec, buckets)


def merge(a: AggregateState, b: AggregateState) -> AggregateState:
    """Both states in one (for a profile merge): commutative and associative."""
    if a.spec != b.spec:
        raise ValueError("cannot merge states of different aggregate specs")
    buckets = dict(a.buckets)
    for key, record in b.buckets.items():
        current = buckets.get(key)
        buckets[key] = record if current is None else _combine(a.spec.kind, current, record)
    return AggregateState(a.spec, buckets)


def merge_stored(kind: str, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``merge`` on two stored forms (``to_json``) of states of one spec, knowing only its kind."""
    def parse(data: dict[str, Any]) -> dict[str, Record]:
        buckets = data.get("b") or {}
        if kind in ("sum", "average"):
            return {key: [r[0], _decimal(r[1])] for key, r in buckets.items()}
        return dict(buckets)

    buckets = parse(a)
    for key, record in parse(b).items():
        current = buckets.get(key)
        buckets[key] = record if current is None else _combine(kind, current, record)
    if kind in ("sum", "average"):
        return {"b": {key: [r[0], _sum_to_json(r[1])] for key, r in buckets.items()}}
    return {"b": buckets}


def _today(now: datetime) -> date:
    return (now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)).date()


def _window_records(state: AggregateState, now: datetime) -> list[Record]:
    window = state.spec.window
    if not isinstance(window, DaysWindow):
        return list(state.buckets.values())
    today = _today(now)
    first = (today - timedelta(days=window.days - 1)).isoformat()
    last = today.isoformat()
    return [record for day, record in state.buckets.items() if first <= day <= last]


def _plain(total: Decimal) -> int | float:
    return int(total) if total == total.to_integral_value() else float(total)


def value(state: AggregateState, now: datetime) -> Any:
    """The aggregate over the spec's window at ``now`` (see the module's window rule).

    With no contributing event: 0 for count, sum and unique_count, ``[]`` for unique,
    None for the others.
    """
    kind = state.spec.kind
    records = _window_records(state, now)
    if not records:
        return {"count": 0, "sum": 0, "unique": [], "unique_count": 0}.get(kind)
    total = records[0]
    for record in records[1:]:
        total = _combine(kind, total, record)
    if kind == "count":
        return total[0]
    if kind == "sum":
        return _plain(total[1])
    if kind == "average":
        return float(_EXACT.divide(total[1], Decimal(total[0])))
    if kind in ("min", "max", "first", "last"):
        return total[0]
    if kind == "most_frequent":
        best = min(total.items(), key=lambda item: (-item[1], item[0]))
        return json.loads(best[0])
    if kind == "unique":
        return [json.loads(key) for key in total]
    return len(total)


def prune(state: AggregateState, now: datetime) -> AggregateState:
    """Drop the day buckets before the window of ``now`` (they can never be read again).

    Only sliding windows have day buckets; other states are returned unchanged. Buckets
    after ``now``'s day are kept (clock skew: they enter the window later).
    """
    window = state.spec.window
    if not isinstance(window, DaysWindow):
        return state
    first = (_today(now) - timedelta(days=window.days - 1)).isoformat()
    kept = {day: record for day, record in state.buckets.items() if day >= first}
    return state if len(kept) == len(state.buckets) else AggregateState(state.spec, kept)


def _sum_to_json(total: Decimal) -> int | float | str:
    plain = _plain(total)
    return plain if _decimal(plain) == total else str(total)


def to_json(state: AggregateState) -> dict[str, Any]:
    """The compact stored form ``{"b": {bucket: record}}`` (the spec is not stored)."""
    kind = state.spec.kind
    if kind in ("sum", "average"):
        return {"b": {key: [r[0], _sum_to_json(r[1])] for key, r in state.buckets.items()}}
    return {"b": {key: record for key, record in state.buckets.items()}}


def from_json(spec: AggregateSpec, data: dict[str, Any]) -> AggregateState:
    """The state stored by :func:`to_json` for ``spec``."""
    buckets = data.get("b") or {}
    if spec.kind in ("sum", "average"):
        return AggregateState(spec, {key: [r[0], _decimal(r[1])] for key, r in buckets.items()})
    return AggregateState(spec, dict(buckets))
