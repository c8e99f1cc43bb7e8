"""What a profile knows, folded from events: order-insensitive by construction.

Traits are a last-writer-wins map: each trait keeps the value of the event with the
latest ``timestamp`` (ties broken by ``messageId``), so any arrival order, and merging
profiles in any order, gives the same traits. ``first_seen`` is a minimum,
``last_seen`` a maximum, ``last_context`` follows the latest event, and the event count
is a sum (exact because the pipeline stores each messageId once).
"""

from __future__ import annotations

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
    last_seen: str | None = None
    last_seen_message: str = ""
    last_context: dict[str, Any] = field(default_factory=dict)
    event_count: int = 0


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


def fold_event(state: ProfileState, event: dict[str, Any]) -> ProfileState:
    """The state after one (deduplicated) event of this profile."""
    at, message_id = event["timestamp"], event["messageId"]
    newer = state.last_seen is None or (at, message_id) > (state.last_seen, state.last_seen_message)
    context = _context(event)
    return replace(
        state,
        traits=merge_traits(state.traits, traits_of(event)) if event.get("type") != "group" else state.traits,
        first_seen=_min(state.first_seen, at),
        last_seen=at if newer else state.last_seen,
        last_seen_message=message_id if newer else state.last_seen_message,
        last_context={k: context[k] for k in CONTEXT_FIELDS if k in context} if newer else state.last_context,
        event_count=state.event_count + 1,
    )


def merge_states(a: ProfileState, b: ProfileState) -> ProfileState:
    """Two profiles' states as one (a merge); commutative and associative."""
    a_newer = (a.last_seen or "", a.last_seen_message) >= (b.last_seen or "", b.last_seen_message)
    latest = a if a_newer else b
    return ProfileState(
        traits=merge_traits(a.traits, b.traits),
        first_seen=_min(a.first_seen, b.first_seen),
        last_seen=latest.last_seen,
        last_seen_message=latest.last_seen_message,
        last_context=latest.last_context,
        event_count=a.event_count + b.event_count,
    )
