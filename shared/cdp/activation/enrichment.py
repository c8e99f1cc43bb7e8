"""What a destination Lambda adds to a message before sending it: the person's profile.

The router's messages carry references only (profile id, audience, event); the profile
is read when the message is delivered, so a destination gets the traits as they are
then (a retry hours later sends the newest email address, not a stale copy) and
nothing personal waits in a queue longer than it must.

The view (``message.body["profile"]``, None when the profile no longer exists: erased,
or never created):

* ``profile_id``: the live profile (a merged-away id resolves to its survivor);
* ``traits``: the profile's traits (latest value of each);
* ``identifiers``: normalised identifiers by type (``email``, ``phone``, ``user_id``, ...);
* ``fields``: the destination's field mapping applied to the traits;
* ``memberships``: the audiences the profile is in now, for destinations that store
  membership as a property (only when asked: it costs a Query).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cdp.activation.delivery import OutboundMessage
from cdp.activation.destinations import DestinationConfig
from cdp.profiles import UserProfile


def person_view(profile: UserProfile) -> dict[str, Any]:
    """A profile's ``traits`` (latest value of each) and ``identifiers`` (normalised values
    by type): what trigger profile conditions and destination filters test."""
    identifiers: dict[str, list[str]] = {}
    for identifier in profile.identifiers:
        identifiers.setdefault(identifier.type, []).append(identifier.value)
    return {"traits": {name: trait.value for name, trait in sorted(profile.state.traits.items())},
            "identifiers": {kind: sorted(values) for kind, values in sorted(identifiers.items())}}


def profile_view(profile: UserProfile | None, destination: DestinationConfig,
                 memberships: Iterable[str] | None = None) -> dict[str, Any] | None:
    """The ``profile`` of a message (see the module docstring)."""
    if profile is None:
        return None
    people = person_view(profile)
    view: dict[str, Any] = {"profile_id": profile.profile_id, **people,
                            "fields": destination.map_traits(people["traits"])}
    if memberships is not None:
        view["memberships"] = sorted(memberships)
    return view


def with_profile(message: OutboundMessage, view: dict[str, Any] | None) -> OutboundMessage:
    """The message with its ``profile`` set."""
    return OutboundMessage(message.deduplication_id, {**message.body, "profile": view})
