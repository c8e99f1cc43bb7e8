"""Slack incoming-webhook messages for audience changes and real-time trigger alerts.

A message is Slack's ``{"text": ..., "blocks": [...]}``: ``text`` is the notification
fallback, the blocks are what people read (Block Kit ``section`` and ``context`` blocks,
``mrkdwn`` text objects). The first line comes from a template the destination
configures, a ``str.format`` string with named fields only (``{audience_name}``,
``{person}``, ...); ``MessageTemplate`` validates it when the configuration is read, so a
typo fails the deployment, not every delivery.

Slack's rules applied (Slack API docs: "Formatting text for app surfaces", Block Kit
"Section block", "Context block", "Text object"):

- ``&``, ``<`` and ``>`` are control characters (``<`` starts a link, a mention or
  ``<!channel>``): every value that comes from data is HTML-entity escaped (``&amp;``,
  ``&lt;``, ``&gt;``), and only those three. The template's own text is the operator's and
  is left alone, so it may hold mrkdwn and ``<https://...|links>``.
- A section's text is at most 3,000 characters; a section field's at most 2,000, with at
  most 10 fields; a context block holds at most 10 elements; a text object is never empty.
  Longer text is cut, with an ellipsis, never inside an escape entity.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Mapping
from typing import Any

from cdp.segmentation.audience_events import EVENT_NAMES

SECTION_TEXT_MAX = 3000
SECTION_FIELD_TEXT_MAX = 2000
SECTION_FIELDS_MAX = 10
CONTEXT_TEXT_MAX = 3000  # a text object's limit; a context element is a text object
# Our choice, for readability: one long value must not push the rest of a line out.
VALUE_MAX = 500
ELLIPSIS = "…"
MISSING = "(none)"

AUDIENCE_FIELDS = frozenset({"audience_name", "audience_id", "transition", "event", "person",
                             "user_id", "anonymous_id", "profile_id", "timestamp"})
TRIGGER_FIELDS = frozenset({"rule_name", "event", "person", "user_id", "anonymous_id", "timestamp"})
DEFAULT_AUDIENCE_TEMPLATE = "*{person}* {transition} the audience *{audience_name}*"
DEFAULT_TRIGGER_TEMPLATE = ":rotating_light: *{rule_name}*: *{person}* did *{event}*"


def escape(text: str) -> str:
    """Slack's three control characters as HTML entities (``&`` first, so an entity
    produced here is not escaped twice)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in an ellipsis if cut, and never
    in the middle of an ``&amp;`` / ``&lt;`` / ``&gt;`` entity (Slack would show the half)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ELLIPSIS)]
    # An entity is at most 5 characters: a cut one shows as '&' plus up to 3 more, no ';'.
    amp = cut.rfind("&", max(0, len(cut) - 4))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + ELLIPSIS


def _as_text(value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return str(value)


def _value(value: Any, limit: int = VALUE_MAX) -> str:
    """A data value as safe mrkdwn: text, escaped, cut to ``limit``."""
    return truncate(escape(_as_text(value)), limit)


class MessageTemplate:
    """A validated message template: named fields from ``allowed`` only, no positional
    fields, attribute or index access, conversions or format specs. Raises ValueError
    naming the problem and the allowed fields."""

    def __init__(self, template: str, allowed: Iterable[str]) -> None:
        allowed_fields = frozenset(allowed)
        choices = ", ".join("{" + name + "}" for name in sorted(allowed_fields))
        if not isinstance(template, str) or not template.strip():
            raise ValueError(f"Slack template must be a non-empty string using the fields {choices}")
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"Slack template {template!r} is not a valid format string ({exc}); "
                             "write a literal brace as '{{' or '}}'") from exc
        used: list[str] = []
        for _literal, name, spec, conversion in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise ValueError(f"Slack template {template!r} has a positional field; use named fields: {choices}")
            if name not in allowed_fields:
                raise ValueError(f"Slack template {template!r} uses the unknown field {{{name}}}; "
                                 f"allowed fields: {choices}")
            if spec or conversion:
                raise ValueError(f"Slack template {template!r}: field {{{name}}} has a conversion or format "
                                 "spec, which templates do not support")
            used.append(name)
        self.template = template
        self.fields = frozenset(used)

    def render(self, values: Mapping[str, Any]) -> str:
        """The template filled with ``values``, each escaped and cut to ``VALUE_MAX``; the
        result cut to a section's limit."""
        text = self.template.format_map({name: _value(values.get(name)) for name in self.fields})
        return truncate(text, SECTION_TEXT_MAX) if text.strip() else MISSING


def audience_template(template: str = DEFAULT_AUDIENCE_TEMPLATE) -> MessageTemplate:
    """A validated template for audience changes (fields: ``AUDIENCE_FIELDS``)."""
    return MessageTemplate(template, AUDIENCE_FIELDS)


def trigger_template(template: str = DEFAULT_TRIGGER_TEMPLATE) -> MessageTemplate:
    """A validated template for trigger alerts (fields: ``TRIGGER_FIELDS``)."""
    return MessageTemplate(template, TRIGGER_FIELDS)


def _person_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
    return {"user_id": user_id, "anonymous_id": anonymous_id,
            "person": user_id if user_id not in (None, "") else anonymous_id,
            "timestamp": event.get("timestamp")}


def _event_name(event: Mapping[str, Any]) -> Any:
    """A track call's event name; a page or screen view as "viewed <name>"; else the call's type."""
    if event.get("event"):
        return event["event"]
    if event.get("type") in ("page", "screen") and event.get("name"):
        return f"viewed {event['name']}"
    return event.get("type")


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _context(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    line = " · ".join(f"{label}: {_value(value)}" for label, value in pairs)
    return {"type": "context", "elements": [_mrkdwn(truncate(line, CONTEXT_TEXT_MAX))]}


def _message(headline: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"text": headline, "blocks": [{"type": "section", "text": _mrkdwn(headline)}, *blocks]}


def _template(template: MessageTemplate | str | None, default: MessageTemplate,
              allowed: frozenset[str]) -> MessageTemplate:
    if template is None:
        return default
    if isinstance(template, MessageTemplate):
        return template
    return MessageTemplate(template, allowed)


_TRANSITIONS = {name: transition for transition, name in EVENT_NAMES.items()}


def audience_change_message(event: Mapping[str, Any],
                            template: MessageTemplate | str | None = None) -> dict[str, Any]:
    """The message for an ``Audience Entered`` / ``Audience Exited`` event (as
    ``cdp.segmentation.audience_events.audience_event`` builds it). Raises ValueError for
    any other event, or an invalid template."""
    transition = _TRANSITIONS.get(str(event.get("event")))
    if transition is None:
        raise ValueError("not an Audience Entered / Audience Exited event")
    properties = event.get("properties") or {}
    personas = (event.get("context") or {}).get("personas") or {}
    audience_id = properties.get("audience_id") or properties.get("audience_key")
    values = {**_person_fields(event), "event": event.get("event"), "transition": transition,
              "audience_id": audience_id, "audience_name": properties.get("audience_name") or audience_id,
              "profile_id": personas.get("profile_id")}
    headline = _template(template, _AUDIENCE_DEFAULT, AUDIENCE_FIELDS).render(values)
    return _message(headline, [_context([("Audience", audience_id), ("Profile", values["profile_id"]),
                                         ("At", values["timestamp"])])])


def _summary_fields(profile_summary: Mapping[str, Any]) -> tuple[list[dict[str, str]], int]:
    """Section fields ``*name*\\nvalue`` for the first ten entries, and how many were left out."""
    items = list(profile_summary.items())
    fields = []
    for name, value in items[:SECTION_FIELDS_MAX]:
        label = _value(name, 200)
        # Room for the label, its asterisks and the newline; the value takes the rest.
        fields.append(_mrkdwn(f"*{label}*\n{_value(value, SECTION_FIELD_TEXT_MAX - len(label) - 3)}"))
    return fields, max(0, len(items) - SECTION_FIELDS_MAX)


def trigger_message(rule_name: str, event: Mapping[str, Any], profile_summary: Mapping[str, Any] | None = None,
                    template: MessageTemplate | str | None = None) -> dict[str, Any]:
    """The alert for an event that matched a trigger rule: the template's line, the
    profile summary (trait name -> value, in the given order) as section fields, and a
    context line with the event and when it happened."""
    values = {**_person_fields(event), "rule_name": rule_name, "event": _event_name(event)}
    headline = _template(template, _TRIGGER_DEFAULT, TRIGGER_FIELDS).render(values)
    blocks: list[dict[str, Any]] = []
    context: list[tuple[str, Any]] = [("Event", values["event"]), ("At", values["timestamp"])]
    if profile_summary:
        fields, left_out = _summary_fields(profile_summary)
        blocks.append({"type": "section", "fields": fields})
        if left_out:
            context.append(("Not shown", f"{left_out} more"))
    blocks.append(_context(context))
    return _message(headline, blocks)


_AUDIENCE_DEFAULT = audience_template()
_TRIGGER_DEFAULT = trigger_template()
