"""The Profile API (Segment Profile API compatible): paths, authorization, pages, response shapes.

``GET /v1/spaces/<space>/collections/<users|accounts>/profiles/<type>:<value>/<resource>``
with ``resource`` one of ``traits``, ``events``, ``external_ids``, ``links``,
``metadata``. Shapes follow Segment's Profile API (docs/profile-api.md lists every
field and where it differs). This module holds no AWS code: it answers an
``ApiRequest`` from a ``ProfileReader`` and a token lookup, so the Lambda handler only
translates HTTP.

Decisions, in order: no or unknown token 401; token of another space 403; a space other
than this deployment's, an unknown path, collection or resource, or an unknown profile
404; a malformed identifier, parameter or cursor 400. Nothing is read from the tables
before the token is accepted, and every answer is built from the one live profile (or
account) the identifier resolves to.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cdp.access_tokens import AccessToken, authorize, token_from_authorization
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import (
    Identifier,
    IdentifierRefused,
    normalise_email,
    normalise_id,
    normalise_phone,
)
from cdp.identity.profile_state import ProfileState, last_context_of
from cdp.profiles import Account, ProfileReader, StoredEvent, UserProfile
from cdp.segment import ECMA_WHITESPACE
from cdp.segmentation.catalog import Catalog
from cdp.segmentation.tallies import aggregate_states, computed_values, tallies_from_json

COLLECTIONS = ("users", "accounts")
RESOURCES = ("traits", "events", "external_ids", "links", "metadata")
# (default, maximum) page size per resource: Segment's documented defaults where it has
# them (10 traits, 20 links), its 1..100 range elsewhere, up to 200 traits as Segment.
LIMITS: dict[str, tuple[int, int]] = {
    "traits": (10, 200),
    "external_ids": (25, 100),
    "events": (10, 100),
    "links": (20, 100),
}
WWW_AUTHENTICATE = 'Basic realm="cdp-profile-api", charset="UTF-8"'
# Profile data must not sit in shared caches.
COMMON_HEADERS = {"Cache-Control": "no-store"}
_TYPE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_HASHED = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ApiRequest:
    """What the handler hands over: the (already URL-decoded) path, query and Authorization header."""

    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    authorization: str | None = None


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    # For logs and metrics: the resource asked for and the outcome (never the identifier).
    resource: str = ""
    code: str = "ok"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def not_found(message: str = "Profile was not found.") -> ApiError:
    return ApiError(404, "not_found", message)


def invalid(message: str) -> ApiError:
    return ApiError(400, "validation_error", message)


# --- paths and identifiers --------------------------------------------------------------------


@dataclass(frozen=True)
class ProfilePath:
    space: str
    collection: str
    identifier: str  # "<type>:<value>" as sent (decoded)
    resource: str
    path: str


def space_of(path: str) -> str | None:
    """The ``<space>`` of ``/v1/spaces/<space>/...``, if the path has that form."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[0] == "" and parts[1:3] == ["v1", "spaces"] and parts[3]:
        return parts[3]
    return None


def parse_path(path: str) -> ProfilePath:
    """``/v1/spaces/<space>/collections/<c>/profiles/<id>/<resource>``; the id may contain ``/``."""
    parts = path.split("/")
    if (len(parts) < 9 or parts[0] != "" or parts[1:3] != ["v1", "spaces"] or parts[4] != "collections"
            or parts[6] != "profiles"):
        raise not_found("No such path: use /v1/spaces/<space>/collections/<users|accounts>/profiles/"
                        "<type>:<value>/<traits|events|external_ids|links|metadata>.")
    collection, resource, identifier = parts[5], parts[-1], "/".join(parts[7:-1])
    if collection not in COLLECTIONS:
        raise not_found(f"Unknown collection {collection!r}: use users or accounts.")
    if resource not in RESOURCES:
        raise not_found(f"Unknown resource {resource!r}: use one of {', '.join(RESOURCES)}.")
    if not identifier:
        raise not_found("The profile identifier is missing.")
    return ProfilePath(parts[3], collection, identifier, resource, path)


def lookup_identifier(text: str, config: IdentityConfig) -> Identifier:
    """``<type>:<value>`` normalised as the stream consumer normalises that type.

    Emails are NFKC-folded, trimmed and lowercased, phone numbers become E.164 (with
    the deployment's default region), other ids are trimmed, so ``email:Ana@Example.com``
    finds the profile that holds ``ana@example.com``.
    """
    type_name, separator, raw = text.partition(":")
    type_name = type_name.strip().lower()
    if not separator or not _TYPE.match(type_name):
        raise invalid("The profile identifier must be <type>:<value>, e.g. user_id:u123 or email:ana@example.com.")
    value = raw.strip(ECMA_WHITESPACE)
    try:
        if type_name == "email":
            normalised = normalise_email(value)
        elif type_name == "phone":
            normalised = normalise_phone(value, config.default_phone_region)
        else:
            normalised = normalise_id(value)
    except IdentifierRefused as refused:
        raise invalid(f"The {type_name} value {refused}.") from refused
    return Identifier(type_name, normalised)


# --- query parameters and cursors ---------------------------------------------------------------


def parse_limit(query: Mapping[str, str], resource: str) -> int:
    default, maximum = LIMITS[resource]
    raw = query.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise invalid(f"limit must be a whole number from 1 to {maximum}.") from None
    if not 1 <= limit <= maximum:
        raise invalid(f"limit must be a whole number from 1 to {maximum}.")
    return limit


def parse_list(query: Mapping[str, str], name: str) -> list[str] | None:
    raw = query.get(name)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def parse_flag(query: Mapping[str, str], name: str) -> bool:
    raw = (query.get(name) or "").strip().lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise invalid(f"{name} must be true or false.")


def encode_cursor(kind: str, position: Any) -> str:
    """An opaque cursor: base64url of the position in one list (no identifier inside)."""
    raw = json.dumps({"k": kind, "p": position}, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(kind: str, cursor: str | None) -> Any:
    """The position of a cursor made by ``encode_cursor(kind, ...)``; None for no cursor."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid("next is not a cursor of this list.") from None
    if not isinstance(data, dict) or data.get("k") != kind or "p" not in data:
        raise invalid("next is not a cursor of this list.")
    return data["p"]


def cursor_body(url: str, limit: int, kind: str, position: Any) -> dict[str, Any]:
    return {"url": url, "has_more": position is not None, "next": encode_cursor(kind, position)
            if position is not None else "", "limit": limit}


def _text_position(position: Any) -> str | None:
    if position is None:
        return None
    if not isinstance(position, str):
        raise invalid("next is not a cursor of this list.")
    return position


# --- response shapes ----------------------------------------------------------------------------


def external_id(identifier: Identifier, collection: str = "users") -> dict[str, Any]:
    # Values longer than a DynamoDB key allows are stored as their SHA-256 (cdp.keys).
    encoding = "sha256" if _HASHED.match(identifier.value) else "none"
    return {"id": identifier.value, "type": identifier.type, "collection": collection, "encoding": encoding}


def _event_names(event: Mapping[str, Any]) -> set[str]:
    return {str(event[k]) for k in ("event", "name", "type") if event.get(k) is not None}


_EVENT_FIELDS = (("type", "type"), ("event", "event"), ("name", "name"), ("category", "category"),
                 ("properties", "properties"), ("traits", "traits"), ("context", "context"),
                 ("userId", "user_id"), ("anonymousId", "anonymous_id"), ("groupId", "group_id"),
                 ("previousId", "previous_id"), ("timestamp", "timestamp"),
                 ("originalTimestamp", "original_timestamp"), ("receivedAt", "received_at"))


def event_view(stored: StoredEvent, profile_id: str, keep_ip: bool = False) -> dict[str, Any]:
    """A stored event as Segment's Profile API shows one (snake_case keys, its external ids).

    The collector records each event's ``context.ip``; it is shown only where the
    deployment keeps IP addresses on profiles (``keep_ip``), as for the last context.
    """
    event = stored.event
    view: dict[str, Any] = {dst: event[src] for src, dst in _EVENT_FIELDS if event.get(src) is not None}
    if not keep_ip and isinstance(view.get("context"), dict) and "ip" in view["context"]:
        view["context"] = {k: v for k, v in view["context"].items() if k != "ip"}
    view["message_id"] = event.get("messageId")
    view["source_id"] = stored.source_id
    ids = [Identifier(t, str(event[k])) for k, t in (("userId", "user_id"), ("anonymousId", "anonymous_id"))
           if event.get(k) not in (None, "")]
    view["external_ids"] = [external_id(i) for i in ids]
    view["related"] = {"users": profile_id}
    return view


TRAIT_CLASSES = ("custom_trait", "computed_trait", "audience")


def trait_class(query: Mapping[str, str]) -> str | None:
    """The ``class`` filter of a traits request (None: every class)."""
    value = query.get("class")
    if not value:
        return None
    if value not in TRAIT_CLASSES:
        raise invalid(f"class must be one of {', '.join(TRAIT_CLASSES)}.")
    return value


def _traits_body(traits: Mapping[str, Any], query: Mapping[str, str], url: str) -> dict[str, Any]:
    limit = parse_limit(query, "traits")
    include = parse_list(query, "include")
    after = _text_position(decode_cursor("traits", query.get("next")))
    names = sorted(n for n in traits if (include is None or n in include) and (after is None or n > after))
    page, more = names[:limit], len(names) > limit
    return {"traits": {n: traits[n] for n in page},
            "cursor": cursor_body(url, limit, "traits", page[-1] if more else None)}


def _trait_values(state: ProfileState, verbose: bool) -> dict[str, Any]:
    """Trait values; verbose: each with when (event timestamp) and by which message it was set."""
    traits = state.traits
    if verbose:
        return {n: {"value": t.value, "updated_at": t.at, "message_id": t.message_id} for n, t in traits.items()}
    return {n: t.value for n, t in traits.items()}


def _external_ids_body(ids: list[Identifier], collection: str, query: Mapping[str, str], url: str
                       ) -> dict[str, Any]:
    limit = parse_limit(query, "external_ids")
    include = parse_list(query, "include")
    after = _text_position(decode_cursor("external_ids", query.get("next")))
    chosen = sorted((i for i in ids if (include is None or i.type in include)
                     and (after is None or i.key() > after)), key=Identifier.key)
    page, more = chosen[:limit], len(chosen) > limit
    return {"data": [external_id(i, collection) for i in page],
            "cursor": cursor_body(url, limit, "external_ids", page[-1].key() if more else None)}


def _metadata(created_at: str, updated_at: str, state: ProfileState,
              newest: StoredEvent | None = None) -> dict[str, Any]:
    """``last_seen`` is the newest event's time (from the history; the profile item keeps the day only)."""
    return {"created_at": created_at, "updated_at": updated_at, "expires_at": None,
            "first_seen": state.first_seen,
            "last_seen": newest.event.get("timestamp") if newest else None,
            "last_seen_day": state.last_seen_day,
            "last_message_id": newest.event.get("messageId") if newest else None}


def _plain(value: Any) -> Any:
    """DynamoDB numbers (Decimal) and sets as JSON values."""
    if isinstance(value, set | frozenset | list | tuple):
        return [_plain(v) for v in (sorted(value) if isinstance(value, set | frozenset) else value)]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    return str(value)


# --- the API -----------------------------------------------------------------------------------------


class ProfileApi:
    """Answers Profile API requests for one space of one deployment."""

    def __init__(self, reader: ProfileReader, find_token: Callable[[str], AccessToken | None], space_id: str,
                 identity_config: IdentityConfig | Callable[[], IdentityConfig] = IdentityConfig,
                 keep_ip: bool = False, catalog: Callable[[], Catalog] = Catalog,
                 audiences: Callable[[str], Mapping[str, bool]] | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """``identity_config``: the identity settings in force, or what returns them (they may
        change at run time; identifiers are normalised with the consumer's current ones).
        ``keep_ip``: show the IP address in a profile's last context. ``catalog``: the
        definitions in force (computed traits); ``audiences``: a profile's audience
        memberships (audience id -> member), the boolean trait of each audience."""
        self._catalog = catalog
        self._audiences = audiences
        self._now = now
        self._reader = reader
        self._keep_ip = keep_ip
        self._find_token = find_token
        self._space = space_id
        config = identity_config
        self._config: Callable[[], IdentityConfig] = (lambda: config) if isinstance(config, IdentityConfig) \
            else config

    def handle(self, request: ApiRequest) -> ApiResponse:
        resource = ""
        try:
            self._authorize(request)
            target = parse_path(request.path)
            resource = target.resource
            if target.space != self._space:
                raise not_found(f"Space {target.space!r} does not exist in this deployment.")
            body = self._answer(target, request.query)
        except ApiError as error:
            return ApiResponse(error.status, {"error": {"code": error.code, "message": error.message}},
                               {**COMMON_HEADERS, **error.headers}, resource, error.code)
        return ApiResponse(200, body, dict(COMMON_HEADERS), resource)

    def _authorize(self, request: ApiRequest) -> None:
        token = token_from_authorization(request.authorization)
        if token is None:
            raise ApiError(401, "authentication_error",
                           "An access token is required: send it as the HTTP Basic username with an empty "
                           "password.", {"WWW-Authenticate": WWW_AUTHENTICATE})
        decision = authorize(self._find_token(token), space_of(request.path) or "")
        if decision == "unauthenticated":
            raise ApiError(401, "authentication_error", "The access token is not valid (unknown or revoked).",
                           {"WWW-Authenticate": WWW_AUTHENTICATE})
        if decision == "forbidden":
            raise ApiError(403, "forbidden", "The access token is not valid for this space.")

    def _answer(self, target: ProfilePath, query: Mapping[str, str]) -> dict[str, Any]:
        if target.collection == "accounts":
            return self._account(target, query)
        identifier = target.identifier
        if identifier.partition(":")[0].strip().lower() == "profile_id":
            profile_id = identifier.partition(":")[2].strip()
            profile = self._reader.profile_by_id(profile_id) if profile_id else None
        else:
            profile = self._reader.profile_by_identifier(lookup_identifier(identifier, self._config()))
        if profile is None:
            raise not_found()
        return self._user(profile, target, query)

    # --- users -----------------------------------------------------------------------------------

    def _user_traits(self, profile: UserProfile, wanted: str | None, verbose: bool) -> dict[str, Any]:
        """Custom traits (from events), computed traits and audience booleans, as Segment
        lists them; a computed trait or audience hides a custom trait of the same name."""
        found: dict[str, Any] = {}
        if wanted in (None, "custom_trait"):
            found.update(_trait_values(profile.state, verbose))
        if wanted in (None, "computed_trait"):
            catalog = self._catalog()
            now = self._now()
            states = aggregate_states(tallies_from_json(profile.tallies), catalog.specs)
            for name, value in computed_values(catalog, states, now).items():
                found[name] = {"value": value, "class": "computed_trait"} if verbose else value
        if wanted in (None, "audience") and self._audiences is not None:
            for name, member in self._audiences(profile.profile_id).items():
                found[name] = {"value": member, "class": "audience"} if verbose else member
        return found

    def _user(self, profile: UserProfile, target: ProfilePath, query: Mapping[str, str]) -> dict[str, Any]:
        url = target.path
        verbose = parse_flag(query, "verbose")
        if target.resource == "traits":
            return _traits_body(self._user_traits(profile, trait_class(query), verbose), query, url)
        if target.resource == "external_ids":
            return _external_ids_body(list(profile.identifiers), "users", query, url)
        if target.resource == "events":
            return self._events(profile, query, url)
        if target.resource == "links":
            return self._accounts_of(profile, query, url)
        newest = self._reader.events(profile, 1, None, lambda event: True).items
        metadata = {"profile_id": profile.profile_id,
                    **_metadata(profile.created_at, profile.updated_at, profile.state, newest[0] if newest else None),
                    "merged_from": list(profile.merged_from)}
        if verbose:
            log = self._reader.merge_log(profile)
            metadata["last_context"] = last_context_of(newest[0].event, self._keep_ip) if newest else {}
            metadata["merges"] = [_plain({k: m.get(k) for k in ("survivor", "merged", "identifiers", "message_id",
                                                               "at", "merged_at")}) for m in log.merges]
            # Dropped identifiers may belong to another person: only their types are shown.
            metadata["blocked_merges"] = [
                {"message_id": b.get("message_id"), "at": b.get("at"),
                 "dropped_types": sorted({str(d).partition(":")[0] for d in b.get("dropped") or []})}
                for b in log.blocked]
        return {"metadata": metadata}

    def _events(self, profile: UserProfile, query: Mapping[str, str], url: str) -> dict[str, Any]:
        limit = parse_limit(query, "events")
        if (query.get("sort") or "desc").lower() != "desc":
            raise invalid("Only sort=desc (newest first) is supported.")
        for unsupported in ("start", "end"):
            if query.get(unsupported):
                raise invalid(f"{unsupported} is not supported; page with next instead.")
        include, exclude = parse_list(query, "include"), parse_list(query, "exclude")
        position = decode_cursor("events", query.get("next"))
        if position is not None and not (isinstance(position, list) and len(position) == 2
                                         and all(isinstance(p, str) for p in position)):
            raise invalid("next is not a cursor of this list.")

        def accept(event: dict[str, Any]) -> bool:
            names = _event_names(event)
            return (include is None or bool(names & set(include))) and not (exclude and names & set(exclude))

        page = self._reader.events(profile, limit, tuple(position) if position else None, accept)
        return {"data": [event_view(e, profile.profile_id, self._keep_ip) for e in page.items],
                "cursor": cursor_body(url, limit, "events",
                                      list(page.next_position) if page.next_position else None)}

    def _accounts_of(self, profile: UserProfile, query: Mapping[str, str], url: str) -> dict[str, Any]:
        limit = parse_limit(query, "links")
        page = self._reader.accounts_of(profile, limit, _text_position(decode_cursor("links", query.get("next"))))
        return {"data": [{"to_collection": "accounts",
                          "external_ids": [external_id(Identifier("group_id", link.group_id), "accounts")]}
                         for link in page.items],
                "cursor": cursor_body(url, limit, "links", page.next_position)}

    # --- accounts --------------------------------------------------------------------------------

    def _account(self, target: ProfilePath, query: Mapping[str, str]) -> dict[str, Any]:
        type_name, _, raw = target.identifier.partition(":")
        if type_name.strip().lower() != "group_id":
            raise invalid("Accounts are looked up by group id: group_id:<groupId>.")
        try:
            group_id = normalise_id(raw.strip(ECMA_WHITESPACE))
        except IdentifierRefused as refused:
            raise invalid(f"The group_id value {refused}.") from refused
        account = self._reader.account(group_id)
        if account is None:
            raise not_found("Account was not found.")
        url = target.path
        if target.resource == "traits":
            # Accounts have custom traits only (no computed traits or audiences of accounts yet).
            values = _trait_values(account.state, parse_flag(query, "verbose")) \
                if trait_class(query) in (None, "custom_trait") else {}
            return _traits_body(values, query, url)
        if target.resource == "external_ids":
            return _external_ids_body([Identifier("group_id", account.group_id)], "accounts", query, url)
        if target.resource == "events":
            raise not_found("Accounts have no event history here: read the members' events through /links.")
        if target.resource == "links":
            return self._members(account, query, url)
        return {"metadata": {"group_id": account.group_id,
                             **_metadata(account.created_at, account.updated_at, account.state)}}

    def _members(self, account: Account, query: Mapping[str, str], url: str) -> dict[str, Any]:
        limit = parse_limit(query, "links")
        page = self._reader.members_of(account.group_id, limit,
                                       _text_position(decode_cursor("links", query.get("next"))))
        return {"data": [{"to_collection": "users", "profile_id": member.profile_id,
                          "external_ids": [external_id(i) for i in member.identifiers]}
                         for member in page.items],
                "cursor": cursor_body(url, limit, "links", page.next_position)}
