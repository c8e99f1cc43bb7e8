"""``Audience Entered`` / ``Audience Exited``: track events about a membership change.

As Segment's Engage sends them: a track event of the person, with the audience's key in
the properties (``audience_key``, and ``<audience_key>: true|false``), and
``context.personas`` naming the computation. They go onto the event stream like any
event, so they land in the person's history and can feed other definitions.

The ``messageId`` is a hash of audience, profile, transition and profile version, and
the timestamp is the stored entry or exit time: a redelivered stream record emits the
very same event, which the history then drops as a duplicate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from cdp.segmentation.membership import Transition

# The source the events are recorded under (no write key: written by the evaluator).
AUDIENCE_SOURCE_ID = "cdp-audiences"
EVENT_NAMES: dict[str, str] = {"entered": "Audience Entered", "exited": "Audience Exited"}


def audience_message_id(audience_id: str, profile_id: str, transition: Transition, version: int) -> str:
    digest = hashlib.sha256(f"{audience_id}|{profile_id}|{transition}|{version}".encode()).hexdigest()
    return f"audience-{digest[:32]}"


def person_of(ids: Sequence[str]) -> dict[str, str] | None:
    """``{"userId": ...}`` if the profile has a user id, else ``{"anonymousId": ...}``; None
    if it has neither (an event must carry one). Ids are identifier keys
    (``ident#user_id:u1``); hashed (over-long) values are skipped."""
    for type_name, field_name in (("user_id", "userId"), ("anonymous_id", "anonymousId")):
        values = sorted(key.removeprefix(f"ident#{type_name}:") for key in ids
                        if key.startswith(f"ident#{type_name}:"))
        values = [v for v in values if v and not v.startswith("sha256:")]
        if values:
            return {field_name: values[0]}
    return None


def audience_event(*, audience_id: str, audience_name: str, profile_id: str, person: dict[str, str],
                   transition: Transition, version: int, at: str) -> dict[str, Any]:
    """The track event of one transition (already normalised: ``receivedAt`` and ``messageId`` set)."""
    return {
        "type": "track",
        "event": EVENT_NAMES[transition],
        **person,
        "messageId": audience_message_id(audience_id, profile_id, transition, version),
        "timestamp": at,
        "receivedAt": at,
        "properties": {
            "audience_id": audience_id,
            "audience_name": audience_name,
            "audience_key": audience_id,
            audience_id: transition == "entered",
        },
        "context": {
            "library": {"name": "cdp-segment-evaluator", "version": "1"},
            "personas": {"computation_class": "audience", "computation_id": audience_id,
                         "computation_key": audience_id, "profile_id": profile_id},
        },
    }
