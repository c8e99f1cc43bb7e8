"""The activation router's work on one batch: decisions (``cdp.activation.router``) turned
into messages on the destinations' queues.

Two inputs, one per event source mapping of the router function:

* memberships-table stream records (old and new images): each entry or exit goes to the
  destinations that list its audience;
* event-stream records (the collector's record format, ``kind`` ``event``): each event goes
  to the destinations with a matching trigger rule. Only then is the person looked up
  (their profile, for the message group, and their audiences, for a trigger's audience
  condition), once per person per batch.

Every message of the batch is sent before the invocation returns (``QueueSender.send``
raises if any entry was refused, failing the batch, which the mapping retries: FIFO
deduplication ids make a resend of the same change a no-op within SQS's 5 minutes, and
the destinations are idempotent beyond that). Skipped destinations are counted by
reason; the reasons name configuration only (no personal data), so they may be logged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdp.activation.destinations import DestinationConfig
from cdp.activation.router import ConsentContext, Routed, Routing, membership_change, route_change, route_event


class QueueSender(Protocol):
    """Puts routed messages on their destinations' queues (``cdp.aws.destination_queues``)."""

    def send(self, destination: DestinationConfig, messages: Sequence[Routed]) -> None: ...


@dataclass(frozen=True)
class Person:
    """What the router needs to know of an event's person."""

    profile_id: str | None
    audiences: frozenset[str] = frozenset()
    # ``traits`` and ``identifiers`` of the profile (trigger profile conditions); None: no profile
    profile: Mapping[str, Any] | None = None


class PeopleLookup(Protocol):
    """Finds an event's person (``cdp.aws.activation_profiles``)."""

    def person_of(self, event: Mapping[str, Any], need_audiences: bool) -> Person: ...


@dataclass
class RoutingStats:
    inputs: int = 0
    changes: int = 0  # membership records that were an entry or an exit
    events: int = 0  # events that matched a trigger of some destination
    messages: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # "<destination>: <reason>" -> count

    def as_metrics(self) -> dict[str, int]:
        return {"RoutedInputs": self.inputs, "RoutedChanges": self.changes, "RoutedEvents": self.events,
                "RoutedMessages": self.messages, "RoutingSkipped": sum(self.skipped.values())}


def _wants_event(destinations: Iterable[DestinationConfig], event: Mapping[str, Any]) -> tuple[bool, bool]:
    """(some trigger may match the event's type and name, one of those needs the person's audiences)."""
    kind = event.get("type")
    name = event.get("event") if kind == "track" else event.get("name")
    candidates = [t for d in destinations for t in d.triggers
                  if t.event_type == kind and (t.event is None or t.event == name)]
    return bool(candidates), any(t.audience for t in candidates)


class ActivationRouter:
    """Routes a batch; see the module docstring."""

    def __init__(self, destinations: Sequence[DestinationConfig], queues: QueueSender,
                 people: PeopleLookup | None = None) -> None:
        self.destinations = list(destinations)
        self._by_id = {d.id: d for d in self.destinations}
        self._queues = queues
        self._people = people

    def route_changes(self, images: Iterable[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]
                      ) -> RoutingStats:
        """Memberships-table stream records, as (old image, new image) in DynamoDB JSON."""
        stats = RoutingStats()
        routings: list[Routing] = []
        for old, new in images:
            stats.inputs += 1
            change = membership_change(old, new)
            if change is None:
                continue
            stats.changes += 1
            routings.append(route_change(change, self.destinations,
                                         ConsentContext(keys=(change.profile_id,))))
        self._send(routings, stats)
        return stats

    def route_events(self, events: Iterable[Mapping[str, Any]]) -> RoutingStats:
        """Events from the event stream (the records' ``event`` objects)."""
        stats = RoutingStats()
        routings: list[Routing] = []
        candidates: list[tuple[Mapping[str, Any], bool]] = []
        for event in events:
            stats.inputs += 1
            wanted, needs_audiences = _wants_event(self.destinations, event)
            if wanted:
                candidates.append((event, needs_audiences))
        persons = self._persons(candidates)
        for (event, _), person in zip(candidates, persons, strict=True):
            routing = route_event(event, self.destinations, person.audiences, profile_id=person.profile_id,
                                  profile=person.profile)
            if routing.messages or routing.skipped:
                stats.events += 1
            routings.append(routing)
        self._send(routings, stats)
        return stats

    def _persons(self, candidates: Sequence[tuple[Mapping[str, Any], bool]]) -> list[Person]:
        """The candidate events' people: read for the whole batch at once when the lookup
        can (``persons_of``), else once per person of the batch."""
        if self._people is None or not candidates:
            return [Person(None)] * len(candidates)
        batch = getattr(self._people, "persons_of", None)
        if callable(batch):
            audiences = {t.audience for d in self.destinations for t in d.triggers if t.audience}
            found: list[Person] = batch([event for event, _ in candidates], audiences)
            return found
        # person key -> (the person, whether their audiences were read): a person in no
        # audience has empty ``audiences`` either way, so the flag is what says it was read.
        people: dict[tuple[Any, Any], tuple[Person, bool]] = {}
        persons = []
        for event, needs_audiences in candidates:
            key = (event.get("userId"), event.get("anonymousId"))
            known = people.get(key)
            if known is None or (needs_audiences and not known[1] and known[0].profile_id):
                known = (self._people.person_of(event, needs_audiences), needs_audiences)
                people[key] = known
            persons.append(known[0])
        return persons

    def _send(self, routings: Sequence[Routing], stats: RoutingStats) -> None:
        by_destination: dict[str, list[Routed]] = {}
        for routing in routings:
            for message in routing.messages:
                by_destination.setdefault(message.destination_id, []).append(message)
            for skipped in routing.skipped:
                stats.skipped[f"{skipped.destination_id}: {skipped.reason}"] += 1
        for destination_id, messages in by_destination.items():
            self._queues.send(self._by_id[destination_id], messages)
            stats.messages += len(messages)
