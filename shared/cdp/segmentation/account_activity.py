"""Account activity (B2B): which members of an account performed selected events, per day.

An ``account_activity`` condition (``cdp.segmentation.definitions``) reads, for each of
the profile's accounts, how many distinct members performed the selected events in a
window. The account item (``acct#<groupId>`` in the identity table) keeps, per
**activity spec** (``AccountActivitySpec``: selector and window, by ``activity_id()``),
the set of the members per bucket, in its ``act`` attribute (JSON)::

    {"act_2aa34502185167d4a7d0": {"d": 7, "b": {"2026-11-28": ["Hx2k9Q0aZm1c", "b7Rr0..."]}}}

A member is stored as its **tag** (:func:`member_tag`: 12 characters of a hash of the
profile id, 72 bits), not the profile id itself: profile ids are up to ~175 characters
(home profiles encode their anonymous id), and the item must stay well under DynamoDB's
400 KB and cheap to write (write units are billed per KB). Only counts are read.

**Buckets** are those of ``cdp.segmentation.aggregates``: a sliding window (``d`` days)
keeps one bucket per UTC day of the event's ``timestamp``; all time and between two dates
keep one bucket ``*`` (events outside the dates are left out). The window rule is the
same too: N days at ``now`` are ``now``'s UTC day and the N - 1 days before it.

**Union.** A bucket is a set, and folding, merging and backfilling are set unions: a
union is commutative, associative and idempotent, so duplicates, redeliveries and any
order converge, and no stream marks are needed (unlike counts, ``cdp.segmentation.tallies``).

**Bounds.** A bucket keeps at most :func:`bucket_cap` tags, the smallest ones (so the cap
is deterministic and the union stays order-insensitive): :data:`MEMBERS_CAP` (1,000),
lowered for windows over 7 days so that one spec's state holds at most
:data:`STATE_CAP` tags (7,000, about 105 KB): 233 a day for 30 days, 77 for 90. An
account with more members active on one day reads the cap for that day. An ``act``
attribute that would pass :data:`MAX_ACTIVITY_BYTES` is not grown (many specs at the cap).
Day buckets before the window of ``now`` are dropped at each write (``d`` is stored so a
state of a spec no definition reads any more is pruned too, until it is empty).

**Merged profiles.** A profile merged into another counts under its old id's tag in the
buckets written before the merge, and under the survivor's after it: one person active
under both ids in one window is counted twice until the older bucket leaves the window.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from cdp.segmentation.aggregates import event_time, selects
from cdp.segmentation.definitions import AccountActivitySpec, BetweenWindow, DaysWindow, Window

MEMBERS_CAP = 1_000  # member tags kept per bucket
STATE_CAP = 7_000  # member tags kept per spec state (all its day buckets)
TAG_LENGTH = 12
ALL_TIME = "*"
# An account item's ``act`` beyond this (DynamoDB items are at most 400 KB) gains nothing
# more: the write is skipped (and logged) rather than failing the consumer's batch forever.
MAX_ACTIVITY_BYTES = 300_000

# spec id -> bucket -> member tags (sorted): one account's activity, as read.
Activity = Mapping[str, Mapping[str, Sequence[str]]]
# group id -> spec id -> bucket -> member tags to add: what a batch (or a backfill) unites.
Additions = dict[str, dict[str, dict[str, set[str]]]]


class LiveActivitySpec(Protocol):
    """An activity spec with the instant from which the stream consumer keeps it
    (``cdp.segmentation.catalog.ActiveActivitySpec``)."""

    @property
    def spec(self) -> AccountActivitySpec: ...

    @property
    def live_from(self) -> str: ...


def _today(now: datetime) -> date:
    return (now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)).date()


def member_tag(profile_id: str) -> str:
    """How a member is stored in a bucket: 12 base64url characters of its profile id's SHA-256."""
    digest = hashlib.sha256(profile_id.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:TAG_LENGTH]


def bucket_cap(window: Window | None) -> int:
    """How many members a bucket of a spec with this window keeps."""
    if isinstance(window, DaysWindow):
        return max(1, min(MEMBERS_CAP, STATE_CAP // window.days))
    return MEMBERS_CAP


def bucket_of(window: Window | None, at: datetime) -> str | None:
    """The bucket of an event at ``at`` (None: outside a between-dates window)."""
    if isinstance(window, DaysWindow):
        return at.date().isoformat()
    if isinstance(window, BetweenWindow) and not window.start <= at.date() <= window.end:
        return None
    return ALL_TIME


def unite(a: Iterable[str], b: Iterable[str], cap: int = MEMBERS_CAP) -> list[str]:
    """Two buckets as one: the union, capped at its ``cap`` smallest members."""
    return sorted(set(a) | set(b))[:cap]


def active_members(window: Window | None, buckets: Mapping[str, Sequence[str]], now: datetime) -> set[str]:
    """The distinct members in the window at ``now`` (buckets dated after ``now``'s day are not read)."""
    if not isinstance(window, DaysWindow):
        return {member for ids in buckets.values() for member in ids}
    today = _today(now)
    first, last = (today - timedelta(days=window.days - 1)).isoformat(), today.isoformat()
    return {member for day, ids in buckets.items() if first <= day <= last for member in ids}


def member_count(spec: AccountActivitySpec, activity: Activity, now: datetime) -> int:
    """How many distinct members of one account performed the spec's events in its window at ``now``."""
    buckets = activity.get(spec.activity_id())
    return 0 if not buckets else len(active_members(spec.window, buckets, now))


def _instant_key(iso: str) -> str:
    """Comparable form of an ISO instant, as ``cdp.segmentation.tallies`` compares ``live_from``."""
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _received(event: Mapping[str, Any]) -> str:
    return str(event.get("receivedAt") or event.get("timestamp") or "")


def selected_by_any(specs: Mapping[str, LiveActivitySpec], event: Mapping[str, Any]) -> bool:
    """Whether some live activity spec selects the event (received at or after its ``live_from``)."""
    received = _instant_key(_received(event))
    return any(received >= _instant_key(a.live_from) and selects(a.spec, dict(event)) for a in specs.values())


def selected_before_live(specs: Mapping[str, LiveActivitySpec], event: Mapping[str, Any]) -> bool:
    """Whether some activity spec selects the event and it was received before that spec's
    ``live_from`` (the backfill's part: :func:`history_additions` may add it)."""
    received = _instant_key(_received(event))
    return any(received < _instant_key(a.live_from) and selects(a.spec, dict(event)) for a in specs.values())


def _additions(profile_id: str, accounts: Iterable[str], specs: Mapping[str, LiveActivitySpec],
               events: Iterable[Mapping[str, Any]], before_live: bool) -> Additions:
    groups = sorted(set(accounts))
    if not groups:
        return {}
    member = member_tag(profile_id)
    per_spec: dict[str, dict[str, set[str]]] = {}
    live = [(spec_id, active, _instant_key(active.live_from)) for spec_id, active in specs.items()]
    for event in events:
        received = _instant_key(_received(event))
        for spec_id, active, live_from in live:
            if (received < live_from) != before_live or not selects(active.spec, dict(event)):
                continue
            try:
                bucket = bucket_of(active.spec.window, event_time(dict(event)))
            except ValueError:
                continue  # no timestamp: no day to count it on
            if bucket is not None:
                per_spec.setdefault(spec_id, {}).setdefault(bucket, set()).add(member)
    if not per_spec:
        return {}
    return {group: {spec_id: {b: set(ids) for b, ids in buckets.items()} for spec_id, buckets in per_spec.items()}
            for group in groups}


def stream_additions(profile_id: str, accounts: Iterable[str], specs: Mapping[str, LiveActivitySpec],
                     events: Iterable[Mapping[str, Any]]) -> Additions:
    """Per account of the profile, the buckets its events add (its :func:`member_tag` in the
    bucket of each event received at or after each spec's ``live_from``: the stream
    consumer's part)."""
    return _additions(profile_id, accounts, specs, events, before_live=False)


def history_additions(profile_id: str, accounts: Iterable[str], specs: Mapping[str, LiveActivitySpec],
                      events: Iterable[Mapping[str, Any]]) -> Additions:
    """Per account of the profile, the buckets its history adds: the events received
    **before** each spec's ``live_from`` (the backfill's part; the consumer's cut is the
    same, so the two never leave a gap). Uniting it twice changes nothing."""
    return _additions(profile_id, accounts, specs, events, before_live=True)


def merge_additions(into: Additions, more: Additions) -> None:
    """Add ``more`` to ``into`` (in place): a batch's additions of all its profiles."""
    for group, per_spec in more.items():
        for spec_id, buckets in per_spec.items():
            target = into.setdefault(group, {}).setdefault(spec_id, {})
            for bucket, ids in buckets.items():
                target.setdefault(bucket, set()).update(ids)


def activity_from_json(text: str | None) -> dict[str, dict[str, Any]]:
    """The stored ``act`` attribute: spec id -> ``{"d": days?, "b": {bucket: [ids]}}``."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def activity_to_json(states: Mapping[str, Mapping[str, Any]]) -> str:
    return json.dumps(states, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def buckets_of(states: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """The stored states as the evaluator reads them: spec id -> bucket -> member tags."""
    return {spec_id: dict(state.get("b") or {}) for spec_id, state in states.items()}


def _prune(state: dict[str, Any], now: datetime) -> dict[str, Any]:
    days = state.get("d")
    if not isinstance(days, int) or days < 1:
        return state
    first = (_today(now) - timedelta(days=days - 1)).isoformat()
    kept = {bucket: ids for bucket, ids in (state.get("b") or {}).items() if bucket >= first}
    return {**state, "b": kept}


def unite_activity(states: Mapping[str, Mapping[str, Any]], additions: Mapping[str, Mapping[str, Iterable[str]]],
                   specs: Mapping[str, AccountActivitySpec], now: datetime) -> dict[str, dict[str, Any]]:
    """One account's stored states with ``additions`` (spec id -> bucket -> member tags) united in,
    and every sliding state pruned to the window of ``now`` (empty states dropped).

    ``specs``: the activity specs of the additions (their windows). States of other specs
    are kept (another consumer may know a newer catalog), pruned by their stored ``d``.
    """
    result: dict[str, dict[str, Any]] = {spec_id: dict(state) for spec_id, state in states.items()}
    for spec_id, buckets in additions.items():
        spec = specs[spec_id]
        state = result.get(spec_id) or {}
        stored = dict(state.get("b") or {})
        for bucket, ids in buckets.items():
            stored[bucket] = unite(stored.get(bucket, ()), ids, bucket_cap(spec.window))
        state = {"b": stored}
        if isinstance(spec.window, DaysWindow):
            state["d"] = spec.window.days
        result[spec_id] = state
    pruned = {spec_id: _prune(state, now) for spec_id, state in result.items()}
    return {spec_id: state for spec_id, state in pruned.items() if state.get("b")}
