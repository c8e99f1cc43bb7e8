"""Extract and normalise the identifiers of an event.

Sources: ``userId``, ``anonymousId``, email (``traits.email``, ``context.traits.email``),
phone (``traits.phone``, ``context.traits.phone``), ``context.externalIds[]``, device ids
(``context.device.id``, ``context.device.advertisingId``) and the ``previousId`` of an
``alias``. Normalisation per type:

- ids: trimmed; numbers become strings;
- email: NFKC-normalised, trimmed, lowercased, and it must look like ``local@domain``.
  Lookalike letters from other scripts (Cyrillic U+0430 for Latin ``a``) are not folded:
  such an address stays a different identifier and never merges with the Latin one;
- phone: E.164 via the ``phonenumbers`` library; numbers without ``+country`` need the
  configured default region, otherwise they are refused.

Blocked placeholder values (``null``, ``anonymous``, ``0``, all-zero ids, ...) and values
over the configured length are refused, each with a reason, and never reach the graph.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from cdp.identity.config import IdentityConfig

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EMAIL_LENGTH = 254


@dataclass(frozen=True, order=True)
class Identifier:
    type: str
    value: str

    def key(self) -> str:
        """The identity table's key for this identifier."""
        return f"{self.type}:{self.value}"


@dataclass(frozen=True)
class RefusedIdentifier:
    type: str
    source: str  # where in the event it was found, e.g. "traits.email"
    reason: str


@dataclass
class ExtractedIdentifiers:
    identifiers: list[Identifier] = field(default_factory=list)
    refused: list[RefusedIdentifier] = field(default_factory=list)
    # alias: the id the userId is linked to; a user id or an anonymous id (the graph
    # looks it up as both, as Segment does).
    previous_id: str | None = None


class IdentifierRefused(ValueError):
    pass


def normalise_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise IdentifierRefused(f"must be a string, not {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise IdentifierRefused("is empty")
    return text


def normalise_email(value: Any) -> str:
    if not isinstance(value, str):
        raise IdentifierRefused(f"must be a string, not {type(value).__name__}")
    text = unicodedata.normalize("NFKC", value).strip().lower()
    if len(text) > MAX_EMAIL_LENGTH or not _EMAIL.match(text):
        raise IdentifierRefused("is not an email address")
    return text


def normalise_phone(value: Any, default_region: str | None) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise IdentifierRefused(f"must be a string, not {type(value).__name__}")
    text = str(value).strip()
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise IdentifierRefused("is not a phone number with a country code"
                                if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
                                else "is not a phone number") from exc
    if not phonenumbers.is_possible_number(number):
        raise IdentifierRefused("is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _dig(event: dict[str, Any], *path: str) -> Any:
    node: Any = event
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def extract_identifiers(event: dict[str, Any], config: IdentityConfig) -> ExtractedIdentifiers:
    """Every identifier of a (validated, normalised) Segment event, deduplicated."""
    out = ExtractedIdentifiers()
    seen: set[Identifier] = set()

    def add(type_name: str, source: str, raw: Any, normalise: Any) -> Identifier | None:
        if raw is None:
            return None
        try:
            value = normalise(raw)
        except IdentifierRefused as refused:
            out.refused.append(RefusedIdentifier(type_name, source, f"{source} {refused}"))
            return None
        if len(value) > config.max_value_length:
            out.refused.append(RefusedIdentifier(
                type_name, source, f"{source} is longer than {config.max_value_length} characters"))
            return None
        if config.is_blocked(value):
            out.refused.append(RefusedIdentifier(type_name, source, f"{source} is a blocked value"))
            return None
        identifier = Identifier(type_name, value)
        if identifier not in seen:
            seen.add(identifier)
            out.identifiers.append(identifier)
        return identifier

    def phone(raw: Any) -> str:
        return normalise_phone(raw, config.default_phone_region)

    add("user_id", "userId", event.get("userId"), normalise_id)
    for traits_source in ("traits", "context.traits"):
        traits = _dig(event, *traits_source.split("."))
        if isinstance(traits, dict):
            add("email", f"{traits_source}.email", traits.get("email"), normalise_email)
            add("phone", f"{traits_source}.phone", traits.get("phone"), phone)
    device = _dig(event, "context", "device")
    if isinstance(device, dict):
        add("device_id", "context.device.id", device.get("id"), normalise_id)
        if device.get("advertisingId") is not None:
            device_type = str(device.get("type") or "").lower()
            ad_type = "android.idfa" if device_type == "android" else "ios.idfa"
            add(ad_type, "context.device.advertisingId", device.get("advertisingId"), normalise_id)
    external = _dig(event, "context", "externalIds")
    if isinstance(external, list):
        for index, entry in enumerate(external):
            source = f"context.externalIds.{index}"
            kind = entry.get("type") if isinstance(entry, dict) else None
            if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.]{0,63}", kind.strip()):
                out.refused.append(RefusedIdentifier("external", source, f"{source} needs a type"))
                continue
            type_name = kind.strip().lower()
            normalise = normalise_email if type_name == "email" else phone if type_name == "phone" else normalise_id
            add(type_name, f"{source}.id", entry.get("id"), normalise)
    add("anonymous_id", "anonymousId", event.get("anonymousId"), normalise_id)
    if event.get("type") == "alias" and event.get("previousId") is not None:
        try:
            previous = normalise_id(event["previousId"])
        except IdentifierRefused as refused:
            out.refused.append(RefusedIdentifier("previous_id", "previousId", f"previousId {refused}"))
            return out
        if len(previous) > config.max_value_length or config.is_blocked(previous):
            out.refused.append(RefusedIdentifier("previous_id", "previousId",
                                                 "previousId is a blocked value or too long"))
        elif any(i.type == "user_id" and i.value == previous for i in out.identifiers):
            out.refused.append(RefusedIdentifier("previous_id", "previousId", "previousId equals userId"))
        else:
            out.previous_id = previous
    return out
