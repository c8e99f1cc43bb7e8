"""Access tokens in the sources table (moto): only hashes stored, own key space, revocation, caching."""

from __future__ import annotations

import hashlib

import boto3
import pytest

from cdp import resources
from cdp.access_tokens import AccessTokenRegistry, CachedTokenLookup, access_token_key
from cdp.sources import SourceRegistry, hash_write_key
from tests.integration.conftest import scan


def registries() -> tuple[AccessTokenRegistry, SourceRegistry]:
    table = boto3.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
    return AccessTokenRegistry(table), SourceRegistry(table)


def test_a_token_is_shown_once_and_only_its_hash_is_stored(aws):
    tokens, _ = registries()
    record, secret = tokens.create_token("support tool", "default")

    assert secret.startswith("cdpat_") and len(secret) > 40
    (item,) = scan(resources.SOURCES_TABLE.local_name)
    assert item["key_hash"] == "at#" + hashlib.sha256(secret.encode()).hexdigest() == record.key_hash
    assert secret not in repr(item)
    assert item["kind"] == "access_token" and item["space_id"] == "default"
    assert tokens.find(secret) == record
    assert tokens.find(secret + "x") is None


def test_tokens_and_write_keys_never_stand_in_for_each_other(aws):
    tokens, sources = registries()
    _, write_key = sources.create_source("web")
    _, secret = tokens.create_token("reader", "default", token=write_key)  # the same string, on purpose

    assert tokens.find(write_key) is not None
    assert sources.find_by_write_key(secret) is not None  # the source's own key still works...
    assert access_token_key(secret) != hash_write_key(secret)  # ...and lives under another key
    # Listing sources skips tokens; listing tokens skips sources.
    assert [s.name for s in sources.list_sources()] == ["web"]
    assert [t.name for t in tokens.list_tokens()] == ["reader"]


def test_a_revoked_token_is_refused_and_listed_as_revoked(aws):
    tokens, _ = registries()
    record, secret = tokens.create_token("old", "default")

    assert tokens.revoke(record.token_id) is True
    assert tokens.revoke("tok_missing") is False
    found = tokens.find(secret)
    assert found is not None and found.enabled is False and found.revoked_at


def test_a_space_id_must_be_url_safe(aws):
    tokens, _ = registries()
    with pytest.raises(ValueError):
        tokens.create_token("bad", "a/b")


def test_lookups_are_cached_by_hash_for_the_ttl(aws):
    tokens, _ = registries()
    record, secret = tokens.create_token("cached", "default")
    now = [0.0]
    lookup = CachedTokenLookup(tokens, ttl_seconds=60, negative_ttl_seconds=10, clock=lambda: now[0])

    assert lookup.find(secret) == record
    tokens.revoke(record.token_id)
    assert lookup.find(secret) == record  # still cached
    now[0] = 61
    found = lookup.find(secret)
    assert found is not None and not found.enabled
