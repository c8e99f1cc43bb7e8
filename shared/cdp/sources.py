"""Sources and their write keys.

A write key is a random bearer secret; only its SHA-256 hash is stored (keys are
high-entropy, so a plain hash is enough: no dictionary to guess from). Lookups go by
hash, and the presented key's hash is compared again in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    source_id: str
    name: str
    enabled: bool
    key_hash: str
    created_at: str = ""


def hash_write_key(write_key: str) -> str:
    return hashlib.sha256(write_key.encode("utf-8")).hexdigest()


def new_write_key() -> str:
    return secrets.token_urlsafe(24)


class SourceTable(Protocol):
    """The DynamoDB operations the registry needs (a boto3 Table resource fits)."""

    def get_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def update_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def scan(self, **kwargs: Any) -> dict[str, Any]: ...
    def query(self, **kwargs: Any) -> dict[str, Any]: ...


def _source_from_item(item: dict[str, Any]) -> Source:
    return Source(
        source_id=str(item["source_id"]),
        name=str(item.get("name", "")),
        enabled=bool(item.get("enabled", False)),
        key_hash=str(item["key_hash"]),
        created_at=str(item.get("created_at", "")),
    )


class SourceRegistry:
    """Create, find, enable and disable sources in the sources table."""

    def __init__(self, table: SourceTable) -> None:
        self._table = table

    def create_source(
        self, name: str, write_key: str | None = None, source_id: str | None = None
    ) -> tuple[Source, str]:
        """Register a source; returns it with its write key (shown once, never stored)."""
        key = write_key or new_write_key()
        source = Source(
            source_id=source_id or f"src_{uuid.uuid4().hex[:16]}",
            name=name,
            enabled=True,
            key_hash=hash_write_key(key),
            created_at=datetime.now(UTC).isoformat(),
        )
        self._table.put_item(
            Item={
                "key_hash": source.key_hash,
                "source_id": source.source_id,
                "name": source.name,
                "enabled": True,
                "created_at": source.created_at,
            }
        )
        return source, key

    def find_by_write_key(self, write_key: str) -> Source | None:
        key_hash = hash_write_key(write_key)
        item = self._table.get_item(Key={"key_hash": key_hash}).get("Item")
        if not item or not hmac.compare_digest(str(item["key_hash"]), key_hash):
            return None
        return _source_from_item(item)

    def list_sources(self) -> list[Source]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self._table.scan(**kwargs)
            # The table also holds access tokens (cdp.access_tokens), which have no source.
            items.extend(i for i in page.get("Items", []) if "source_id" in i)
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted((_source_from_item(i) for i in items), key=lambda s: s.created_at)

    def set_enabled(self, source_id: str, enabled: bool) -> int:
        """Enable or disable every write key of a source; returns how many changed."""
        page = self._table.query(
            IndexName="by_source_id",
            KeyConditionExpression="source_id = :s",
            ExpressionAttributeValues={":s": source_id},
        )
        for item in page.get("Items", []):
            self._table.update_item(
                Key={"key_hash": item["key_hash"]},
                UpdateExpression="SET enabled = :e",
                ExpressionAttributeValues={":e": enabled},
            )
        return len(page.get("Items", []))


class CachedLookup(Generic[T]):
    """Secret lookups (write keys, access tokens) cached in a warm function, by hash.

    Most requests then cost no read. A disabled secret stops working within
    ``ttl_seconds``; unknown secrets are cached for a shorter time so a new one works
    quickly and floods of bad ones stay cheap. Only hashes are kept as cache keys.
    """

    def __init__(self, find: Callable[[str], T | None], key_of: Callable[[str], str],
                 ttl_seconds: float = 60.0, negative_ttl_seconds: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        self._find = find
        self._key_of = key_of
        self._ttl = ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._clock = clock or time.monotonic
        self._cache: dict[str, tuple[float, T | None]] = {}
        self._lock = threading.Lock()

    def find(self, secret: str) -> T | None:
        key = self._key_of(secret)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        found = self._find(secret)
        ttl = self._ttl if found else self._negative_ttl
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + ttl, found)
        return found


class CachedSourceLookup(CachedLookup[Source]):
    """Write-key lookups cached in a warm function (see ``CachedLookup``)."""

    def __init__(self, registry: SourceRegistry, ttl_seconds: float = 60.0,
                 negative_ttl_seconds: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        super().__init__(registry.find_by_write_key, hash_write_key, ttl_seconds, negative_ttl_seconds, clock)
