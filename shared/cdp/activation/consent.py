"""Consent and suppression checks before a delivery, with Segment's consent semantics.

A destination declares the consent categories it needs (Segment's ``categoryId`` values:
the keys of ``context.consent.categoryPreferences``). A profile's stored consent is the
``categoryPreferences`` object of its latest event that carried one. The rules, from
Segment's "Consent in Segment Connections" documentation (consent object and the
"Reconcile consent conflicts" tables), twilio.com/docs/segment/privacy/consent-management:

1. A destination mapped to no consent category receives everything, whatever the
   preferences (even an empty ``categoryPreferences``).
2. No consent preferences at all (no ``context.consent``, or a consent object without
   ``categoryPreferences``): Connections does not enforce consent, data flows. Unify
   differs for profiles: categories whose consent was never collected are ``false`` on
   the profile ("Consent in Unify"). ``ConsentPolicy`` chooses which of the two applies.
3. An empty ``categoryPreferences`` object: consent is ``false`` for every category, so
   nothing flows to mapped destinations.
4. A destination mapped to several categories receives data only if consent is ``true``
   for all of them. A category the preferences do not mention is not consented ("a
   category configured in Segment that is not mapped in your CMP": data does not flow).
5. Categories in the preferences that the destination does not need are ignored.

Not specified by Segment, chosen here on the safe side: only a JSON ``true`` is consent
(``"true"``, ``1``, ``null`` are not); category ids match exactly (case-sensitive, as JSON
keys); a ``categoryPreferences`` that is not an object counts as empty (rule 3).

Decisions carry a reason for the log that names categories (configuration) and never
identifiers, trait or event values, or the keys an event sent.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ConsentPolicy(StrEnum):
    """What an absent ``categoryPreferences`` means (rule 2)."""

    # Segment Connections: events without the consent object flow without enforcement.
    CONNECTIONS = "connections"
    # Segment Unify: consent never collected is false for every category.
    UNIFY = "unify"


@dataclass(frozen=True)
class ConsentDecision:
    """Whether a delivery may go ahead, and why (no personal data in ``reason``)."""

    allowed: bool
    reason: str


def preferences_of(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The event's ``context.consent.categoryPreferences``: None when the event carries no
    preferences (no context, no consent object, an empty consent object); ``{}`` when it
    carries an empty or malformed (non-object) ``categoryPreferences``."""
    context = event.get("context")
    consent = context.get("consent") if isinstance(context, Mapping) else None
    if not isinstance(consent, Mapping) or "categoryPreferences" not in consent:
        return None
    preferences = consent["categoryPreferences"]
    return dict(preferences) if isinstance(preferences, Mapping) else {}


def stored_preferences(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """A profile's stored consent: the preferences of the last event (events oldest first)
    that carries any; None if none does. Events without preferences do not change it."""
    stored: dict[str, Any] | None = None
    for event in events:
        preferences = preferences_of(event)
        if preferences is not None:
            stored = preferences
    return stored


def _names(categories: Iterable[str]) -> str:
    return ", ".join(sorted(categories))


def allowed(required: Iterable[str], preferences: Mapping[str, Any] | None,
            policy: ConsentPolicy) -> ConsentDecision:
    """Whether a destination that needs the ``required`` consent categories may receive
    data of a profile (or event) with these ``preferences`` (see the module docstring for
    the rules and their sources)."""
    categories = set(required)
    if not categories:
        return ConsentDecision(True, "destination is mapped to no consent category")
    if preferences is None:
        if policy is ConsentPolicy.CONNECTIONS:
            return ConsentDecision(True, "no consent preferences: consent not enforced")
        return ConsentDecision(False, f"no consent preferences: not consented to {_names(categories)}")
    if not isinstance(preferences, Mapping):
        preferences = {}
    refused = sorted(c for c in categories if preferences.get(c) is False)
    missing = sorted(c for c in categories if c not in preferences)
    # Only a real boolean true counts; the value itself is never logged.
    invalid = sorted(c for c in categories if c in preferences and not isinstance(preferences[c], bool))
    if not (refused or missing or invalid):
        return ConsentDecision(True, f"consented to {_names(categories)}")
    parts = [f"{label}: {', '.join(names)}" for label, names in
             (("refused", refused), ("missing", missing), ("not a boolean", invalid)) if names]
    return ConsentDecision(False, "not consented (" + "; ".join(parts) + ")")


def suppressed(keys: Iterable[str], suppression_set: Container[str]) -> bool:
    """Whether any of a profile's keys (profile id, identifier keys, or the hashes a
    suppression list holds) is in the suppression set."""
    return any(key in suppression_set for key in keys)


def delivery_decision(*, required: Iterable[str], preferences: Mapping[str, Any] | None,
                      policy: ConsentPolicy, keys: Iterable[str],
                      suppression_set: Container[str]) -> ConsentDecision:
    """Suppression first (it overrides any consent), then consent."""
    if suppressed(keys, suppression_set):
        return ConsentDecision(False, "profile is suppressed")
    return allowed(required, preferences, policy)
