"""Access tokens of the Profile API (scope "read") and the admin API (scope "admin"), bound to one space.

Like write keys (``cdp.sources``), a token is random and only its SHA-256 hash is
stored, in the sources table, under a key of its own kind (``at#<sha256>``) so a token
can never be taken for a write key or the other way round. Lookups go by hash and the
hash is compared again in constant time; warm functions cache the answer for a short
time (``CachedTokenLookup``), so revoking a token takes effect within that time.

Presented like Segment's: the token is the HTTP Basic username with an empty password
(``curl -u <token>:``); ``Authorization: Bearer <token>`` is accepted too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cdp.sources import CachedLookup, SourceTable

KEY_PREFIX = "at#"
SCOPES = ("read", "admin")
ITEM_KIND = "access_token"
TOKEN_PREFIX = "cdpat_"
# Space ids appear in URLs: keep them to URL-safe characters.
SPACE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class AccessToken:
    """What is stored about a token (never the token itself)."""

    token_id: str
    name: str
    space_id: str
    enabled: bool
    key_hash: str
    created_at: str = ""
    revoked_at: str = ""
    # "read": the Profile API; "admin": also the admin API (identity settings).
    scope: str = "read"


def access_token_key(token: str) -> str:
    """The sources table key of a token: its SHA-256, prefixed so it is never a write key's."""
    return KEY_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_access_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def valid_space_id(space_id: str) -> bool:
    return bool(SPACE_ID_PATTERN.match(space_id))


def _token_from_item(item: Mapping[str, Any]) -> AccessToken:
    return AccessToken(
        token_id=str(item["token_id"]),
        name=str(item.get("name", "")),
        space_id=str(item["space_id"]),
        enabled=bool(item.get("enabled", False)),
        key_hash=str(item["key_hash"]),
        created_at=str(item.get("created_at", "")),
        revoked_at=str(item.get("revoked_at", "")),
        scope=str(item.get("scope", "read")),
    )


class AccessTokenRegistry:
    """Create, find, list and revoke access tokens in the sources table."""

    def __init__(self, table: SourceTable, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._table = table
        self._now = now

    def create_token(self, name: str, space_id: str, token: str | None = None,
                     token_id: str | None = None, scope: str = "read") -> tuple[AccessToken, str]:
        """Register a token for ``space_id``; returns it with the secret (shown once, never stored)."""
        if not valid_space_id(space_id):
            raise ValueError(f"space id must match {SPACE_ID_PATTERN.pattern}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        secret = token or new_access_token()
        record = AccessToken(
            token_id=token_id or f"tok_{uuid.uuid4().hex[:16]}",
            name=name,
            space_id=space_id,
            enabled=True,
            key_hash=access_token_key(secret),
            created_at=self._now().isoformat(),
            scope=scope,
        )
        self._table.put_item(Item={
            "scope": record.scope,
            "key_hash": record.key_hash,
            "kind": ITEM_KIND,
            "token_id": record.token_id,
            "name": record.name,
            "space_id": record.space_id,
            "enabled": True,
            "created_at": record.created_at,
        })
        return record, secret

    def find(self, token: str) -> AccessToken | None:
        """The token's record if it exists (enabled or not); one GetItem by hash."""
        key = access_token_key(token)
        item = self._table.get_item(Key={"key_hash": key}).get("Item")
        if not item or item.get("kind") != ITEM_KIND or not hmac.compare_digest(str(item["key_hash"]), key):
            return None
        return _token_from_item(item)

    def list_tokens(self) -> list[AccessToken]:
        """Every token, oldest first (a scan: the table holds sources and tokens only)."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"FilterExpression": "kind = :k", "ExpressionAttributeValues": {":k": ITEM_KIND}}
        while True:
            page = self._table.scan(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted((_token_from_item(i) for i in items), key=lambda t: (t.created_at, t.token_id))

    def revoke(self, token_id: str) -> bool:
        """Disable a token for good; False if no token has this id."""
        for token in self.list_tokens():
            if token.token_id == token_id:
                self._table.update_item(
                    Key={"key_hash": token.key_hash},
                    UpdateExpression="SET enabled = :f, revoked_at = :at",
                    ExpressionAttributeValues={":f": False, ":at": self._now().isoformat()},
                )
                return True
        return False


class CachedTokenLookup(CachedLookup[AccessToken]):
    """Token lookups cached in a warm function (a revoked token stops working within ``ttl_seconds``)."""

    def __init__(self, registry: AccessTokenRegistry, ttl_seconds: float = 60.0,
                 negative_ttl_seconds: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        super().__init__(registry.find, access_token_key, ttl_seconds, negative_ttl_seconds, clock)


# --- presenting a token and deciding what it may read ---------------------------------


def token_from_authorization(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header: Basic (token as username) or Bearer."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, _, _password = decoded.partition(":")
    return username or None


Decision = Literal["allowed", "unauthenticated", "forbidden"]


def authorize(token: AccessToken | None, space_id: str) -> Decision:
    """May this token read ``space_id``? Unknown or revoked: unauthenticated; another space: forbidden."""
    if token is None or not token.enabled:
        return "unauthenticated"
    if not hmac.compare_digest(token.space_id.encode("utf-8"), space_id.encode("utf-8")):
        return "forbidden"
    return "allowed"
