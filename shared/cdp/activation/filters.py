"""Lambda event filters of the router's two stream mappings, from the destinations: only
records some destination may want invoke the router (filtered records cost nothing). The
CDK construct sets them on the mappings; the local stack's emulated mappings use them too.
"""

from __future__ import annotations

import json

from cdp.activation.destinations import DestinationConfig

# Lambda's event filters: at most 5 per mapping, each pattern at most 4,096 characters.
MAX_FILTERS = 5
MAX_PATTERN_CHARS = 4096


def _audience_pattern(audiences: list[str]) -> str:
    return json.dumps({"dynamodb": {"NewImage": {"audience_id": {"S": audiences}}}}, separators=(",", ":"))


def audience_filters(destinations: tuple[DestinationConfig, ...]) -> list[str]:
    """Filters of the memberships stream: only items of audiences some enabled destination
    lists, in as few patterns as fit Lambda's limits (none: every record, when no enabled
    destination lists an audience, or the list does not fit ``MAX_FILTERS`` patterns)."""
    audiences = sorted({a for d in destinations if d.enabled for a in d.audiences})
    patterns: list[str] = []
    chunk: list[str] = []
    for audience in audiences:
        if chunk and len(_audience_pattern([*chunk, audience])) > MAX_PATTERN_CHARS:
            patterns.append(_audience_pattern(chunk))
            chunk = []
        chunk.append(audience)
    if chunk:
        patterns.append(_audience_pattern(chunk))
    if len(patterns) > MAX_FILTERS or any(len(p) > MAX_PATTERN_CHARS for p in patterns):
        return []
    return patterns


def trigger_filters(destinations: tuple[DestinationConfig, ...]) -> list[str]:
    """Filters of the event stream: events of the triggers' types and names only (``kind``
    ``event``); a trigger without a name takes every event of its type."""
    names: dict[str, set[str] | None] = {}
    for destination in destinations:
        if not destination.enabled:
            continue
        for trigger in destination.triggers:
            field_names = names.setdefault(trigger.event_type, set())
            if trigger.event is None or field_names is None:
                names[trigger.event_type] = None
            else:
                field_names.add(trigger.event)
    patterns = []
    for event_type, wanted in sorted(names.items()):
        event: dict[str, object] = {"type": [event_type]}
        if wanted:
            event["event" if event_type == "track" else "name"] = sorted(wanted)
        patterns.append(json.dumps({"data": {"kind": ["event"], "event": event}}, separators=(",", ":")))
    if len(patterns) > MAX_FILTERS or any(len(p) > MAX_PATTERN_CHARS for p in patterns):
        return [json.dumps({"data": {"kind": ["event"]}}, separators=(",", ":"))]
    return patterns
