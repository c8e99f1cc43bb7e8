"""A destination Lambda's work on one batch of its queue: profiles read, messages sent,
outcomes settled, the delivery log written.

* The batch's profiles are read together (one ``BatchGetItem`` round, following merges)
  and each message gets its ``profile`` view (``cdp.activation.enrichment``): traits and
  identifiers as they are now, the destination's field mapping applied.
* Per-message destinations (FIFO queues: webhook, Slack, EventBridge, SQS) are run by
  ``cdp.activation.runner.deliver_records`` (in order per profile, a retried message
  holding its profile's later ones); batch APIs (standard queues: Meta, Google, HubSpot,
  S3) by ``deliver_batch_records`` (one request for the batch, each profile's current
  membership sent).
* The counts and the delivered messages' latency go to the delivery log.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cdp.activation.consent import ConsentPolicy, allowed
from cdp.activation.delivery import Destination, OutboundMessage, Outcome, RetryPolicy
from cdp.activation.delivery_log import DeliveryCounts
from cdp.activation.destinations import DestinationConfig
from cdp.activation.enrichment import profile_view, with_profile
from cdp.activation.runner import BatchResult, QueueOperations, deliver_batch_records, deliver_records
from cdp.observability import logger
from cdp.profiles import UserProfile
from cdp.resources import FIFO_DESTINATION_TYPES
from cdp.segmentation.predicates import lookup, passes

# Destination types that store membership as a contact property: they need every audience
# the profile is in, not only the one that changed.
NEEDS_MEMBERSHIPS = frozenset({"hubspot"})


class ProfileSource(Protocol):
    """``cdp.aws.activation_profiles.ActivationProfiles``."""

    def profiles(self, profile_ids: Iterable[str]) -> dict[str, UserProfile | None]: ...

    def audiences_of(self, profile_id: str) -> list[str]: ...

    def memberships_of(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, bool]]: ...

    def person_of(self, event: Mapping[str, Any], need_audiences: bool) -> Any: ...


class DeliveryLogWriter(Protocol):
    def record(self, destination_id: str, counts: DeliveryCounts, now: datetime | None = None) -> None: ...


NOT_SENT = "not sent: "
# What an exit carries of the profile: who it is, and (for destinations that store membership
# as a property) the audiences it is still in, so an exit does not drop the others.
_EXIT_VIEW = ("profile_id", "identifiers", "memberships")


class _WithProfiles:
    """The destination, with each message's ``profile`` set from the batch's views and
    the profile's stored consent checked first; it remembers what was delivered (for the
    latency figures) and what consent kept back.

    In order, for everything but exits: a suppressed profile is never sent; the
    destination's ``filters`` (tests of the profile view: ``traits.country``,
    ``identifiers.email``) must pass; and for audience entries, consent
    (``cdp.activation.consent``, Unify semantics: a profile that never gave preferences
    has not consented). An exit is always sent, with the profile's identifiers only (no
    traits, no mapped fields): removing a person from a list elsewhere is what a
    withdrawal of consent, or a suppression, should lead to. Reasons name configuration
    only, never the person."""

    def __init__(self, destination: Destination, views: Mapping[str, dict[str, Any] | None],
                 config: DestinationConfig, consent: Mapping[str, Mapping[str, Any] | None],
                 suppressed: Container[str] = frozenset(),
                 merged_members: Container[tuple[str, str]] = frozenset()) -> None:
        self._destination = destination
        self._merged_members = merged_members
        self._views = views
        self._config = config
        self._consent = consent
        self._suppressed = suppressed
        self.delivered: list[Mapping[str, Any]] = []
        self.refused: Counter[str] = Counter()

    def _refusal(self, body: Mapping[str, Any], view: Mapping[str, Any] | None) -> str | None:
        change = body.get("kind") == "audience_membership"
        if change and body.get("transition") == "exited":
            return None
        if view is not None and view.get("profile_id") in self._suppressed:
            return "profile is suppressed"
        if self._config.filters:
            subject = dict(view or {})
            failed = [f.path for f in self._config.filters if not passes(f, lookup(subject, f.path))]
            if failed:
                return f"destination filter not matched: {', '.join(failed)}"
        if not change or not self._config.consent_categories:
            return None
        pid = str(body.get("profile_id") or "")
        decision = allowed(self._config.consent_categories, self._consent.get(pid), ConsentPolicy.UNIFY)
        return None if decision.allowed else decision.reason

    def _merged_into_member(self, body: Mapping[str, Any], view: Mapping[str, Any] | None) -> str | None:
        """An exit of a merged-away profile reaches the destination with its survivor's
        identifiers: sent while the survivor is a member, it would remove the survivor."""
        if body.get("kind") != "audience_membership" or body.get("transition") != "exited" or view is None \
                or view.get("profile_id") == body.get("profile_id"):
            return None
        if (view.get("profile_id"), body.get("audience_id")) in self._merged_members:
            return "profile merged into a member of the audience"
        return None

    def _view(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        if body.get("profile_id"):
            return self._views.get(str(body["profile_id"]))
        event = body.get("event")
        return self._views.get(person_key(event)) if isinstance(event, Mapping) else None

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        sending: list[tuple[int, OutboundMessage]] = []
        refused: Counter[str] = Counter()
        for n, message in enumerate(messages):
            view = self._view(message.body)
            refusal = self._refusal(message.body, view) or self._merged_into_member(message.body, view)
            if refusal is not None:
                refused[refusal] += 1
                outcomes[n] = Outcome("delivered", NOT_SENT + refusal)
                continue
            if view is not None and message.body.get("transition") == "exited" \
                    and message.body.get("kind") == "audience_membership":
                view = {**{k: v for k, v in view.items() if k in _EXIT_VIEW}, "traits": {}, "fields": {}}
            sending.append((n, with_profile(message, view)))
        if sending:
            for (n, message), outcome in zip(sending, self._destination.send([m for _, m in sending]), strict=True):
                outcomes[n] = outcome
                if outcome.delivered:
                    self.delivered.append(message.body)
        # counted once the request is answered: a request that raises is retried whole, the
        # kept-back messages with it, and they are counted when they are done
        self.refused.update(refused)
        return [o for o in outcomes if o is not None]


def _bodies(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    bodies = []
    for record in records:
        try:
            body = json.loads(record["body"])
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(body, dict):
            bodies.append(body)
    return bodies


def person_key(event: Mapping[str, Any]) -> str:
    """The key of an event's view when the router did not know its profile (a first event:
    the router and the stream consumer read the stream side by side)."""
    return f"event-person:{event.get('userId') or ''}:{event.get('anonymousId') or ''}"


class DestinationWorker:
    def __init__(self, config: DestinationConfig, destination: Destination, queues: QueueOperations,
                 profiles: ProfileSource, log: DeliveryLogWriter | None = None, retry_base_s: float = 5.0) -> None:
        self.config = config
        self._destination = destination
        self._queues = queues
        self._profiles = profiles
        self._log = log
        self.policy = RetryPolicy(window=timedelta(hours=config.retry_window_hours), base_s=retry_base_s)
        self.consent: dict[str, Mapping[str, Any] | None] = {}  # the batch's profiles' stored preferences
        self.suppressed: set[str] = set()  # the batch's suppressed (live) profile ids
        self.refused: Counter[str] = Counter()  # the last batch's consent refusals, by reason

    def views(self, profile_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """Each profile id's view (keyed by the id the message names, merged or not); the
        profiles' stored consent preferences are kept aside in ``consent``."""
        found = self._profiles.profiles(profile_ids)
        views: dict[str, dict[str, Any] | None] = {}
        for pid in profile_ids:
            profile = found.get(pid)
            stored = profile.state.consent if profile is not None else None
            self.consent[pid] = stored.value if stored is not None and isinstance(stored.value, dict) else None
            if profile is not None and profile.suppressed:
                self.suppressed.add(profile.profile_id)
            memberships = self._profiles.audiences_of(profile.profile_id) \
                if profile is not None and self.config.type in NEEDS_MEMBERSHIPS else None
            views[pid] = profile_view(profile, self.config, memberships)
        return views

    def merged_members(self, bodies: Iterable[Mapping[str, Any]], views: Mapping[str, dict[str, Any] | None]
                       ) -> set[tuple[str, str]]:
        """(survivor, audience) pairs where an audience change names a merged-away profile
        whose survivor is a member now (one consistent read for the batch): the exits of
        the merged-away profile are not sent (``_WithProfiles._merged_into_member``)."""
        wanted: dict[str, set[str]] = {}
        for body in bodies:
            view = views.get(str(body.get("profile_id"))) if body.get("kind") == "audience_membership" else None
            if view is not None and view["profile_id"] != body.get("profile_id") \
                    and isinstance(body.get("audience_id"), str):
                wanted.setdefault(view["profile_id"], set()).add(body["audience_id"])
        if not wanted:
            return set()
        found = self._profiles.memberships_of(wanted)
        return {(pid, aid) for pid, audiences in found.items() for aid, member in audiences.items() if member}

    def member_views(self, audience_id: str, profile_ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """The views of members that may be sent as members of ``audience_id`` (a full
        export): what an entry would be checked against (suppression, filters, consent),
        in the given order; profiles that no longer exist are left out."""
        self.consent = {}
        self.suppressed = set()
        views = self.views(profile_ids)
        check = _WithProfiles(self._destination, views, self.config, self.consent, self.suppressed)
        allowed_views: list[tuple[str, dict[str, Any]]] = []
        for pid in profile_ids:
            view = views.get(pid)
            entry = {"kind": "audience_membership", "transition": "entered", "audience_id": audience_id,
                     "profile_id": pid}
            if view is not None and check._refusal(entry, view) is None:
                allowed_views.append((pid, view))
        return allowed_views

    def send_messages(self, messages: Sequence[OutboundMessage], now: datetime | None = None) -> list[Outcome]:
        """Messages that come from no queue (a batch sync's chunk): profiles read, consent
        checked, sent in one call, the outcomes logged and returned (the caller decides)."""
        moment = now or datetime.now(UTC)
        self.consent = {}
        self.suppressed = set()
        views = self.views(sorted({str(m.body["profile_id"]) for m in messages if m.body.get("profile_id")}))
        destination = _WithProfiles(self._destination, views, self.config, self.consent, self.suppressed,
                                    self.merged_members([m.body for m in messages], views))
        try:
            outcomes = destination.send(messages)
        except Exception as exc:  # the destination's own failure: the sync stops and retries later
            outcomes = [Outcome("retry", f"destination error: {type(exc).__name__}")] * len(messages)
        if self._log is not None:
            counts = DeliveryCounts(attempts=len(messages), delivered=sum(o.delivered for o in outcomes),
                                    retried=sum(o.verdict == "retry" for o in outcomes),
                                    dead_lettered=sum(o.verdict == "permanent" for o in outcomes),
                                    not_sent=sum(destination.refused.values()),
                                    last_error=next((o.reason for o in outcomes if not o.delivered), ""))
            self._log.record(self.config.id, counts, moment)
        self.refused = destination.refused
        return outcomes

    def handle(self, records: Sequence[Mapping[str, Any]], now: datetime | None = None) -> BatchResult:
        moment = now or datetime.now(UTC)
        self.consent = {}
        self.suppressed = set()
        bodies = _bodies(records)
        views = self.views(sorted({str(b["profile_id"]) for b in bodies
                                   if isinstance(b.get("profile_id"), str) and b["profile_id"]}))
        # Events the router could not place: their person now, all their profiles in one read.
        people: dict[str, str | None] = {}
        for body in bodies:
            event = body.get("event")
            if not body.get("profile_id") and isinstance(event, Mapping) and person_key(event) not in people:
                people[person_key(event)] = self._profiles.person_of(event, need_audiences=False).profile_id
        found = self.views(sorted({pid for pid in people.values() if pid})) if any(people.values()) else {}
        views.update({key: found.get(pid) if pid else None for key, pid in people.items()})
        destination = _WithProfiles(self._destination, views, self.config, self.consent, self.suppressed,
                                    self.merged_members(bodies, views))
        if self.config.type in FIFO_DESTINATION_TYPES:
            result = deliver_records(records, destination, self._queues, self.policy, now=moment)
        else:
            result = deliver_batch_records(records, destination, self._queues, self.policy,
                                           self._profiles.memberships_of, now=moment)
        if self._log is not None:
            counts = DeliveryCounts(attempts=len(records) - result.held, delivered=result.delivered,
                                    retried=result.retried, dead_lettered=result.dead_lettered, held=result.held,
                                    last_error=result.last_error)
            counts.observe(destination.delivered, moment)
            counts.not_sent = sum(destination.refused.values())
            try:
                self._log.record(self.config.id, counts, moment)
            except Exception as exc:  # the batch is settled: failing now would deliver it all again
                logger.warning("delivery log not written", extra={"destination": self.config.id,
                                                                  "error": type(exc).__name__})
        self.refused = destination.refused
        return result
