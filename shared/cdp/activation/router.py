"""The router's decisions: which destinations get a membership change or an event, and
the SQS FIFO message each one gets. Pure: no AWS calls (the handler sends the messages
with ``SendMessageBatch`` and logs the skipped destinations).

Inputs:

- a **membership change**, from a memberships-table stream record's old and new images
  (:func:`membership_change`): an entry when ``member`` goes from false or absent to
  true, an exit when it goes from true to false. Writes that change no membership
  (``next_check`` only, a redelivered decision) are not changes;
- an **event** from the event stream, for real-time triggers.

For each destination, in order: does it want it (the audience is one of its
``audiences``; an enabled trigger's event selector, filters and audience condition
match), is it enabled, does the event's Segment ``integrations`` object allow it, and
may it receive this person's data (consent and suppression,
``cdp.activation.consent.delivery_decision``). A destination that does not want the
input is not mentioned; one that wants it but may not have it is in ``skipped`` with a
reason that names configuration only (destination, categories), never personal data.

Messages (one SQS FIFO queue per destination, ``docs/activation.md``):

- ``message_group_id``: the profile id, so a profile's messages are delivered in order
  (an exit never overtakes its entry). SQS takes at most 128 characters of
  alphanumerics and punctuation; any other id is replaced by ``h:`` + its SHA-256.
- ``deduplication_id``: stable across redeliveries of the same stream record. A change:
  ``audience_message_id`` (audience, profile, transition, version: the id of the
  ``Audience Entered/Exited`` event). An event: ``<destination id>:<messageId>``, or
  ``event-`` + a hash of both when that does not fit SQS's rules.
- ``body``: a JSON-serialisable dict with references and the event; never settings or
  secrets. Field mapping is applied by the destination Lambda, which reads the profile.

The ``integrations`` object (Segment: "By default all Destinations are enabled";
``{"All": false, "Intercom": true}`` sends to Intercom only; flags are case sensitive,
segment-docs ``destination-data-control.md``): a destination's key set to ``false``
disables it; set to ``true`` or to an options object enables it even under
``All: false``; absent (or another value), ``All`` decides, and ``All`` is true unless
it is ``false``. This is analytics.js's rule (``isDisabledIntegration``: disabled when
the key is ``false``, or ``All`` is ``false`` and the key is undefined), except that a
``null`` or a non-boolean scalar counts as absent (safe side). It applies to events
only: an audience change is not an event a source sent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cdp.activation.consent import ConsentPolicy, delivery_decision, preferences_of
from cdp.activation.destinations import DestinationConfig, Trigger
from cdp.segmentation.audience_events import EVENT_NAMES, audience_message_id
from cdp.segmentation.membership import Transition
from cdp.segmentation.predicates import lookup, passes

SQS_ID_MAX = 128
# MessageGroupId / MessageDeduplicationId: alphanumerics and punctuation
# (!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~), 1-128 characters (SQS SendMessage API reference).
_SQS_ID = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}$")
# Fields of an event that are never forwarded: the source's write key, and the
# integrations object (other destinations' options; its decision is made here).
_DROPPED_EVENT_FIELDS = ("writeKey", "integrations")
TRIGGER_NAMES = {"track": "event", "page": "name", "screen": "name"}


@dataclass(frozen=True)
class MembershipChange:
    """An entry or exit of one profile in one audience (``version``: the profile version of
    the transition, the item's ``changed_version``; ``at``: its ``entered_at``/``exited_at``)."""

    profile_id: str
    audience_id: str
    transition: Transition
    version: int
    at: str | None

    @property
    def message_id(self) -> str:
        """The transition's id: the ``messageId`` of its ``Audience Entered/Exited`` event."""
        return audience_message_id(self.audience_id, self.profile_id, self.transition, self.version)


@dataclass(frozen=True)
class ConsentContext:
    """What the consent check reads: the profile's (or event's) stored
    ``categoryPreferences`` (None: none collected), which semantics apply to that, and the
    keys checked against the suppression set."""

    preferences: Mapping[str, Any] | None = None
    policy: ConsentPolicy = ConsentPolicy.CONNECTIONS
    keys: Sequence[str] = ()
    suppression_set: Container[str] = frozenset()


@dataclass(frozen=True)
class Routed:
    """One message for one destination's FIFO queue."""

    destination_id: str
    message_group_id: str
    deduplication_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    """A destination that wanted the input but may not have it; ``reason`` holds no personal data."""

    destination_id: str
    reason: str


@dataclass(frozen=True)
class Routing:
    """The router's decision for one input."""

    messages: list[Routed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def sqs_id(text: str) -> str:
    """``text`` if SQS takes it as a group or deduplication id, else ``h:`` + its SHA-256 (66 characters)."""
    if _SQS_ID.match(text):
        return text
    return "h:" + hashlib.sha256(text.encode()).hexdigest()


def message_group_id(profile_id: str) -> str:
    """The FIFO message group of a profile's messages."""
    return sqs_id(profile_id)


def event_deduplication_id(destination_id: str, message_id: str) -> str:
    """Stable per destination and event. A destination id is a slug (no ``:``), so the
    plain form never collides with the hashed one (which has no ``:``)."""
    plain = f"{destination_id}:{message_id}"
    if _SQS_ID.match(plain):
        return plain
    return "event-" + hashlib.sha256(f"{destination_id}|{message_id}".encode()).hexdigest()[:48]


# --- stream images -------------------------------------------------------------------

def _value(image: Mapping[str, Any], name: str) -> Any:
    """An attribute of a stream image, typed (``{"S": ...}``, as in the raw stream record)
    or already deserialised; None when absent or NULL."""
    raw = image.get(name)
    if isinstance(raw, Mapping) and len(raw) == 1:
        kind, value = next(iter(raw.items()))
        if kind == "NULL":
            return None
        if kind == "N":
            return int(value) if re.fullmatch(r"-?\d+", str(value)) else float(value)
        if kind in ("S", "BOOL"):
            return value
    if isinstance(raw, Decimal) and raw == raw.to_integral_value():
        return int(raw)  # boto3's and Powertools' deserialisers give numbers as Decimal
    return raw


def _member(image: Mapping[str, Any] | None) -> bool:
    return bool(image) and _value(image or {}, "member") is True


def membership_change(old_image: Mapping[str, Any] | None,
                      new_image: Mapping[str, Any] | None) -> MembershipChange | None:
    """The entry or exit a memberships-table stream record shows, or None.

    None for a removed item (not an exit: items are removed only when a profile's data is
    erased), for writes that keep ``member`` as it was (``next_check`` moved, a decision
    written again), and for an item that is created as a non-member.
    """
    if not new_image:
        return None
    was, now = _member(old_image), _member(new_image)
    if was == now:
        return None
    transition: Transition = "entered" if now else "exited"
    version = _value(new_image, "changed_version")
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        # written before changed_version existed: the decision's own version
        version = _value(new_image, "profile_version")
    if not isinstance(version, int) or isinstance(version, bool):
        version = 0
    at = _value(new_image, "entered_at" if now else "exited_at")
    return MembershipChange(
        profile_id=str(_value(new_image, "profile_id")),
        audience_id=str(_value(new_image, "audience_id")),
        transition=transition,
        version=version,
        at=at if isinstance(at, str) else None,
    )


# --- decisions -----------------------------------------------------------------------

def _consent(destination: DestinationConfig, consent: ConsentContext) -> Skipped | None:
    decision = delivery_decision(required=destination.consent_categories, preferences=consent.preferences,
                                 policy=consent.policy, keys=consent.keys,
                                 suppression_set=consent.suppression_set)
    return None if decision.allowed else Skipped(destination.id, decision.reason)


def route_change(change: MembershipChange, destinations: Iterable[DestinationConfig],
                 consent: ConsentContext | None = None) -> Routing:
    """The messages of one membership change: one per enabled destination that lists the
    audience and may receive the profile's data. ``consent``: the profile's stored
    preferences (none given: no preferences, Connections semantics, suppression checked
    against nothing)."""
    checked = consent or ConsentContext(keys=(change.profile_id,))
    routing = Routing()
    for destination in destinations:
        if change.audience_id not in destination.audiences:
            continue
        if not destination.enabled:
            routing.skipped.append(Skipped(destination.id, "destination is disabled"))
            continue
        refused = _consent(destination, checked)
        if refused:
            routing.skipped.append(refused)
            continue
        routing.messages.append(Routed(
            destination_id=destination.id,
            message_group_id=message_group_id(change.profile_id),
            deduplication_id=sqs_id(change.message_id),
            body={
                "kind": "audience_membership",
                "destination_id": destination.id,
                "message_id": change.message_id,
                "audience_id": change.audience_id,
                "profile_id": change.profile_id,
                "transition": change.transition,
                "event": EVENT_NAMES[change.transition],
                "version": change.version,
                "at": change.at,
            },
        ))
    return routing


def integration_enabled(integrations: Any, key: str) -> bool:
    """Whether an event's ``integrations`` object lets it go to the destination with this
    key (the module docstring has the rule and its source)."""
    if not isinstance(integrations, Mapping):
        return True
    flag = integrations.get(key)
    if flag is False:
        return False
    if flag is True or isinstance(flag, Mapping):
        return True
    return integrations.get("All") is not False


def trigger_matches(trigger: Trigger, event: Mapping[str, Any], memberships_of_person: Container[str],
                    profile: Mapping[str, Any] | None = None) -> bool:
    """Whether the event is of the trigger's type and name, passes every filter, its
    person is in the trigger's audience (if any) and their profile (``traits``,
    ``identifiers``; None: no profile yet) passes the trigger's profile conditions."""
    if event.get("type") != trigger.event_type:
        return False
    if trigger.event is not None and event.get(TRIGGER_NAMES.get(trigger.event_type, "event")) != trigger.event:
        return False
    data = dict(event)
    if not all(passes(f, lookup(data, f.path)) for f in trigger.where):
        return False
    if trigger.audience is not None and trigger.audience not in memberships_of_person:
        return False
    if trigger.profile_where:
        subject = dict(profile or {})
        return profile is not None and all(passes(f, lookup(subject, f.path)) for f in trigger.profile_where)
    return True


def route_event(event: Mapping[str, Any], destinations: Iterable[DestinationConfig],
                memberships_of_person: Container[str], *, profile_id: str | None = None,
                consent: ConsentContext | None = None, profile: Mapping[str, Any] | None = None) -> Routing:
    """The messages of one incoming event: one per enabled destination with a matching
    trigger, allowed by the event's ``integrations`` object and by consent.

    ``memberships_of_person``: the audience ids the person is in now. ``profile``: their
    profile's ``traits`` and ``identifiers`` (for profile conditions). ``profile_id``: the
    person's profile (the message group); without it, the event's ``userId`` or
    ``anonymousId``. ``consent``: the preferences to apply (none given: the event's own
    ``context.consent.categoryPreferences``, Connections semantics). An event without a
    ``messageId`` (normalised events always have one) cannot be deduplicated and is
    skipped for every destination that wanted it.
    """
    person = profile_id or event.get("userId") or event.get("anonymousId")
    checked = consent or ConsentContext(preferences=preferences_of(event),
                                        keys=(profile_id,) if profile_id else ())
    message_id = event.get("messageId")
    routing = Routing()
    body_event: dict[str, Any] | None = None
    for destination in destinations:
        matched = [t.name for t in destination.triggers
                   if trigger_matches(t, event, memberships_of_person, profile)]
        if not matched:
            continue
        if not destination.enabled:
            routing.skipped.append(Skipped(destination.id, "destination is disabled"))
            continue
        if not integration_enabled(event.get("integrations"), destination.integration_key):
            routing.skipped.append(Skipped(
                destination.id, f"integrations object disables {destination.integration_key!r}"))
            continue
        if not isinstance(message_id, str) or not message_id or not isinstance(person, str) or not person:
            routing.skipped.append(Skipped(destination.id, "event has no messageId or no person"))
            continue
        refused = _consent(destination, checked)
        if refused:
            routing.skipped.append(refused)
            continue
        if body_event is None:
            body_event = {k: v for k, v in event.items() if k not in _DROPPED_EVENT_FIELDS}
        routing.messages.append(Routed(
            destination_id=destination.id,
            message_group_id=message_group_id(person),
            deduplication_id=event_deduplication_id(destination.id, message_id),
            body={
                "kind": "event",
                "destination_id": destination.id,
                "message_id": message_id,
                "profile_id": profile_id,
                "triggers": matched,
                "event": body_event,
            },
        ))
    return routing
