"""Profiles written exactly in the documented storage layout (docs/identity.md), for tests.

``LayoutWriter`` puts the items the unification stage writes (identifier, profile,
account items; history, merge log, blocked merges, account links), reusing the
consumer's own key and record builders where they exist, into either an in-memory
``MemoryProfileTables`` (unit tests) or moto's tables (``moto_writer``).
``MemoryProfileTables`` implements ``cdp.profiles.ProfileTables`` with DynamoDB's query
semantics and counts what it reads, so tests can check that pages stay bounded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer

from cdp import resources
from cdp.aws.event_store import event_item
from cdp.aws.identity_graph import account_key, ident_key, profile_key
from cdp.aws.profile_store import blocked_record, membership_records
from cdp.identity.identifiers import Identifier
from cdp.identity.profile_state import ProfileState, TraitValue, state_to_json
from cdp.profiles import RecordPage

Item = dict[str, Any]
_deserializer = TypeDeserializer()
CREATED = "2026-01-01T00:00:00.000000+00:00"
FAR_FUTURE = 4_000_000_000  # expires_at of events that never expire in tests


def _plain(typed: Item) -> Item:
    return {k: _deserializer.deserialize(v) for k, v in typed.items()}


def identifier(text: str) -> Identifier:
    type_name, _, value = text.partition(":")
    return Identifier(type_name, value)


class LayoutWriter:
    """Builds layout items and hands them to ``put_identity`` / ``put_record``."""

    def __init__(self, put_identity: Callable[[Item], None], put_record: Callable[[Item], None]) -> None:
        self.put_identity = put_identity
        self.put_record = put_record

    def profile(self, profile_id: str, identifiers: Sequence[str], *,
                traits: dict[str, tuple[Any, str, str]] | None = None, created_at: str = CREATED,
                updated_at: str | None = None, first_seen: str | None = None, last_seen_day: str | None = None,
                merged_from: Sequence[str] = ()) -> None:
        """A live profile holding ``identifiers`` (``type:value``), and their identifier items."""
        ids = [identifier(i) for i in identifiers]
        state = ProfileState(traits={n: TraitValue(*v) for n, v in (traits or {}).items()},
                             first_seen=first_seen, last_seen_day=last_seen_day)
        item: Item = {"pk": profile_key(profile_id), "status": "live", "created_at": created_at,
                      "updated_at": updated_at or created_at, "version": 1, "state": state_to_json(state)}
        if ids:
            item["ids"] = {ident_key(i) for i in ids}
        if merged_from:
            item["merged_from"] = set(merged_from)
        self.put_identity(item)
        for i in ids:
            self.put_identity({"pk": ident_key(i), "profile_id": profile_id})

    def merged(self, profile_id: str, into: str, created_at: str = CREATED) -> None:
        """A profile merged into another (its item keeps pointing at the survivor)."""
        self.put_identity({"pk": profile_key(profile_id), "status": "merged", "merged_into": into,
                           "created_at": created_at, "updated_at": created_at, "version": 2})

    def point(self, identifier_text: str, profile_id: str) -> None:
        """An identifier item pointing at a (possibly merged) profile."""
        self.put_identity({"pk": ident_key(identifier(identifier_text)), "profile_id": profile_id})

    def event(self, event: dict[str, Any], source_id: str = "src_test", expires_at: int = FAR_FUTURE) -> None:
        """A stored event, keyed as the event store keys it (``u#``/``a#`` + timestamp#messageId)."""
        self.put_record(_plain(event_item(source_id, event, expires_at)))

    def account(self, group_id: str, traits: dict[str, tuple[Any, str, str]] | None = None,
                created_at: str = CREATED, first_seen: str | None = None, last_seen_day: str | None = None) -> None:
        state = ProfileState(traits={n: TraitValue(*v) for n, v in (traits or {}).items()},
                             first_seen=first_seen, last_seen_day=last_seen_day)
        self.put_identity({"pk": account_key(group_id), "group_id": group_id, "created_at": created_at,
                           "updated_at": created_at, "version": 1, "state": state_to_json(state)})

    def membership(self, profile_id: str, group_id: str) -> None:
        for record in membership_records(profile_id, group_id):
            self.put_record(_plain(record))

    def merge_log(self, survivor: str, merged: str, identifiers: Sequence[str], message_id: str, at: str,
                  merged_at: str) -> None:
        self.put_record({"pk": f"p#{survivor}", "sk": f"merge#{merged}", "survivor": survivor, "merged": merged,
                         "identifiers": list(identifiers), "message_id": message_id, "at": at,
                         "merged_at": merged_at})

    def blocked(self, profile_id: str, message_id: str, at: str, dropped: list[str], profiles: list[str]) -> None:
        self.put_record(_plain(blocked_record(profile_id, message_id, at, dropped, profiles)))


def segment_event(kind: str, message_id: str, timestamp: str, **fields: Any) -> dict[str, Any]:
    """A stored (normalised) Segment event."""
    return {"type": kind, "messageId": message_id, "timestamp": timestamp, "receivedAt": timestamp,
            "context": {"library": {"name": "test"}}, **fields}


class MemoryProfileTables:
    """``ProfileTables`` in memory, with DynamoDB's ordering, ``Limit`` and start keys."""

    def __init__(self) -> None:
        self.identity: dict[str, Item] = {}
        self.records: dict[str, dict[str, Item]] = {}
        self.items_read = 0
        self.queries = 0

    def writer(self) -> LayoutWriter:
        return LayoutWriter(self._put_identity, self._put_record)

    def _put_identity(self, item: Item) -> None:
        self.identity[item["pk"]] = copy.deepcopy(item)

    def _put_record(self, item: Item) -> None:
        self.records.setdefault(item["pk"], {})[item["sk"]] = copy.deepcopy(item)

    def get_identity(self, keys: Sequence[str]) -> dict[str, Item]:
        found = {k: dict(self.identity[k]) for k in dict.fromkeys(keys) if k in self.identity}
        self.items_read += len(found)
        return found

    def get_records(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Item]:
        found = {(pk, sk): dict(self.records[pk][sk]) for pk, sk in dict.fromkeys(keys)
                 if sk in self.records.get(pk, {})}
        self.items_read += len(found)
        return found

    def query_records(self, pk: str, *, limit: int, descending: bool = False, below: str | None = None,
                      below_inclusive: bool = False, prefix: str | None = None,
                      after: str | None = None) -> RecordPage:
        self.queries += 1
        keys = sorted(self.records.get(pk, {}), reverse=descending)
        if below is not None:
            keys = [k for k in keys if k < below or (below_inclusive and k == below)]
        if prefix is not None:
            keys = [k for k in keys if k.startswith(prefix)]
        if after is not None:
            keys = [k for k in keys if (k < after if descending else k > after)]
        page = keys[:limit]
        self.items_read += len(page)
        # DynamoDB returns a LastEvaluatedKey whenever it stopped at the Limit.
        return RecordPage([dict(self.records[pk][k]) for k in page], len(page) == limit)


def moto_writer() -> LayoutWriter:
    """A writer into the identity and events tables of the current moto (or local stack)."""
    ddb = boto3.resource("dynamodb")
    identity = ddb.Table(resources.IDENTITY_TABLE.local_name)
    events = ddb.Table(resources.EVENTS_TABLE.local_name)
    return LayoutWriter(lambda item: identity.put_item(Item=item), lambda item: events.put_item(Item=item))
