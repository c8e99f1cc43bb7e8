"""What a profile knows, folded from events: order-insensitive by construction.

Traits are a last-writer-wins map: each trait keeps the value of the event with the
latest ``timestamp`` (ties broken by ``messageId``), so any arrival order, and merging
profiles in any order, gives the same traits. ``first_seen`` is a minimum and
``last_seen_day`` a maximum (the UTC date of the latest event). Every field is
idempotent as well (a join semilattice), so applying an event or a whole stored state
twice changes nothing: the consumer can retry any write.

What changes with every event is deliberately not stored on the profile: the exact
last-seen time and the last context come from the newest event of the profile's history
(the Profile API reads it), and counts from the deduplicated history. So a page view of
a known visitor writes nothing to the profile unless it carries traits or starts a new
day: most events cost no profile write at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

# Context fields kept on the profile (the device the person was last seen on); the IP
# only where the deployment allows it (it is personal data).
CONTEXT_FIELDS = ("device", "os", "app", "locale", "timezone", "library")


@dataclass(frozen=True)
class TraitValue:
    value: Any
    at: str  # the event's timestamp (ISO 8601 UTC)
    message_id: str

    def newer_than(self, other: TraitValue) -> bool:
        return (self.at, self.message_id) > (other.at, other.message_id)


@dataclass(frozen=True)
class ProfileState:
    traits: dict[str, TraitValue] = field(default_factory=dict)
    first_seen: str | None = None
    last_seen_day: str | None = None  # YYYY-MM-DD (UTC) of the latest event
    # The accounts (group ids) the profile belongs to: a set union, so a ``group`` call
    # changes the profile item once, which re-evaluates its account-based audiences.
    accounts: frozenset[str] = frozenset()
    # The person's consent: ``context.consent.categoryPreferences`` of their latest event
    # that carried it (latest-wins like a trait). Activation checks it before delivering
    # audience changes (cdp.activation.consent). Sites that stamp every event with consent
    # (Segment's consent wrappers do) write the profile on each event: the price of
    # knowing the latest choice in any arrival order.
    consent: TraitValue | None = None


def merge_traits(a: dict[str, TraitValue], b: dict[str, TraitValue]) -> dict[str, TraitValue]:
    merged = dict(a)
    for name, candidate in b.items():
        current = merged.get(name)
        if current is None or candidate.newer_than(current):
            merged[name] = candidate
    return merged


def traits_of(event: dict[str, Any]) -> dict[str, TraitValue]:
    """Traits an event sets: ``traits`` of identify (and ``context.traits`` of any call)."""
    at, message_id = event["timestamp"], event["messageId"]
    found: dict[str, TraitValue] = {}
    context = _context(event)
    sources = [context.get("traits")]
    if event.get("type") == "identify":
        sources.append(event.get("traits"))  # the call's own traits win over context's
    for source in sources:
        if isinstance(source, dict):
            for name, value in source.items():
                found[str(name)] = TraitValue(value, at, message_id)
    return found


def _context(event: dict[str, Any]) -> dict[str, Any]:
    context = event.get("context")
    return context if isinstance(context, dict) else {}


def _min(a: str | None, b: str | None) -> str | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: str | None, b: str | None) -> str | None:
    return b if a is None else a if b is None else max(a, b)


def last_context_of(event: dict[str, Any], keep_ip: bool = False) -> dict[str, Any]:
    """The context fields a profile shows as its last context (the IP only if allowed)."""
    context = _context(event)
    kept = (*CONTEXT_FIELDS, "ip") if keep_ip else CONTEXT_FIELDS
    return {k: context[k] for k in kept if k in context}


def consent_of(event: dict[str, Any]) -> TraitValue | None:
    """The consent preferences an event carries (``context.consent.categoryPreferences``)."""
    consent = _context(event).get("consent")
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    if not isinstance(preferences, dict):
        return None
    return TraitValue(preferences, event["timestamp"], event["messageId"])


def _newer(a: TraitValue | None, b: TraitValue | None) -> TraitValue | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if b.newer_than(a) else a


def fold_event(state: ProfileState, event: dict[str, Any]) -> ProfileState:
    """The state after one event of this profile (applying it twice changes nothing)."""
    at = event["timestamp"]
    group = event.get("groupId") if event.get("type") == "group" else None
    return replace(
        state,
        traits=merge_traits(state.traits, traits_of(event)) if event.get("type") != "group" else state.traits,
        first_seen=_min(state.first_seen, at),
        last_seen_day=_max(state.last_seen_day, at[:10]),
        accounts=state.accounts | {str(group)} if group else state.accounts,
        consent=_newer(state.consent, consent_of(event)),
    )


def fold_account_event(state: ProfileState, event: dict[str, Any]) -> ProfileState:
    """An account's state after one ``group`` event: the call's ``traits`` are the account's."""
    at, message_id = event["timestamp"], event["messageId"]
    traits = event.get("traits")
    found = {str(k): TraitValue(v, at, message_id) for k, v in traits.items()} if isinstance(traits, dict) else {}
    return replace(
        state,
        traits=merge_traits(state.traits, found),
        first_seen=_min(state.first_seen, at),
        last_seen_day=_max(state.last_seen_day, at[:10]),
    )


def merge_states(a: ProfileState, b: ProfileState) -> ProfileState:
    """Two profiles' states as one (a merge); commutative, associative and idempotent."""
    return ProfileState(
        traits=merge_traits(a.traits, b.traits),
        first_seen=_min(a.first_seen, b.first_seen),
        last_seen_day=_max(a.last_seen_day, b.last_seen_day),
        accounts=a.accounts | b.accounts,
        consent=_newer(a.consent, b.consent),
    )


def state_to_json(state: ProfileState) -> str:
    """The stored form (``state`` attribute of ``prof#`` and ``acct#`` items)."""
    data: dict[str, Any] = {
        "traits": {name: [t.value, t.at, t.message_id] for name, t in sorted(state.traits.items())},
        "first_seen": state.first_seen,
        "last_seen_day": state.last_seen_day,
    }
    if state.accounts:
        data["accounts"] = sorted(state.accounts)
    if state.consent is not None:
        data["consent"] = [state.consent.value, state.consent.at, state.consent.message_id]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def state_from_json(text: str | None) -> ProfileState:
    if not text:
        return ProfileState()
    data = json.loads(text)
    return ProfileState(
        traits={name: TraitValue(v[0], v[1], v[2]) for name, v in (data.get("traits") or {}).items()},
        first_seen=data.get("first_seen"),
        last_seen_day=data.get("last_seen_day"),
        accounts=frozenset(data.get("accounts") or ()),
        consent=TraitValue(*data["consent"]) if data.get("consent") else None,
    )
