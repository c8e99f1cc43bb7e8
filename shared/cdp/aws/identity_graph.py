"""The identity graph in DynamoDB (table ``cdp-identity``), safe under concurrent consumers.

Items:
- ``ident#<type>:<value>`` -> ``profile_id``: which profile holds an identifier.
- ``prof#<profile_id>`` -> ``status`` (``live`` | ``merged``), ``merged_into``,
  ``created_at``, ``version``, ``ids`` (the identifier keys it holds).

One event = read (consistent ``BatchGetItem`` of its identifiers, then of their
profiles), plan (``cdp.identity.resolution.plan_resolution``), and one
``TransactWriteItems`` that is conditional on everything the plan read: each touched
profile's ``version``, each re-pointed identifier's current owner, each new identifier's
absence. If another consumer changed any of it first, the transaction is cancelled and
the event is read and planned again, so the result is what some sequential order gives:
no lost update, no identifier on two live profiles, no orphan. Merged profiles keep an
item pointing at their survivor, so old profile ids stay resolvable.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.identity.resolution import ProfileView, ResolutionPlan, plan_resolution
from cdp.keys import bounded

MAX_TRANSACTION_ITEMS = 100
MAX_BATCH_GET = 100


class GraphConflict(Exception):
    """The graph kept changing under this event; the caller retries the record later."""


def ident_key(identifier: Identifier) -> str:
    return f"ident#{identifier.type}:{bounded(identifier.value)}"


def profile_key(profile_id: str) -> str:
    return f"prof#{profile_id}"


def _parse_ident(key: str) -> Identifier:
    type_name, _, value = key.removeprefix("ident#").partition(":")
    return Identifier(type_name, value)


class DynamoIdentityGraph:
    def __init__(self, dynamodb: Any, table_name: str, config: IdentityConfig,
                 attempts: int = 8, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], str] = lambda: datetime.now(UTC).isoformat(timespec="microseconds"),
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._config = config
        self._attempts = attempts
        self._sleep = sleep
        self._now = now
        self._new_id = new_id
        self.retries = 0  # events re-read and re-planned after a concurrent change

    # --- reads -------------------------------------------------------------------------

    def _get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), MAX_BATCH_GET):
            request = {self._table: {"Keys": [{"pk": {"S": k}} for k in unique[start:start + MAX_BATCH_GET]],
                                     "ConsistentRead": True}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    found[item["pk"]["S"]] = item
                request = response.get("UnprocessedKeys") or {}
        return found

    def profile_of(self, profile_id: str) -> str | None:
        """The live profile a (possibly merged) profile id resolves to."""
        for _ in range(64):  # merge chains are short; the bound guards against cycles
            item = self._get([profile_key(profile_id)]).get(profile_key(profile_id))
            if item is None:
                return None
            if item["status"]["S"] == "live":
                return profile_id
            profile_id = item["merged_into"]["S"]
        return None

    def lookup_identifier(self, identifier: Identifier) -> str | None:
        item = self._get([ident_key(identifier)]).get(ident_key(identifier))
        return self.profile_of(item["profile_id"]["S"]) if item else None

    def identifiers_of(self, profile_id: str) -> set[Identifier]:
        item = self._get([profile_key(profile_id)]).get(profile_key(profile_id))
        return {_parse_ident(k) for k in item.get("ids", {}).get("SS", [])} if item else set()

    # --- resolution ---------------------------------------------------------------------

    def resolve(self, identifiers: Iterable[Identifier]) -> tuple[str | None, ResolutionPlan]:
        """Apply one event's identifiers; returns its profile id (None without identifiers)."""
        wanted = list(dict.fromkeys(identifiers))
        for attempt in range(self._attempts):
            snapshot: dict[str, dict[str, Any]] = {}  # what the plan read, for the conditions

            def lookup(ids: list[Identifier], snapshot: dict[str, dict[str, Any]] = snapshot
                       ) -> dict[Identifier, ProfileView]:
                idents = self._get([ident_key(i) for i in ids])
                owners = {i: idents[ident_key(i)]["profile_id"]["S"] for i in ids if ident_key(i) in idents}
                profiles = self._get([profile_key(p) for p in set(owners.values())])
                snapshot.update(idents)
                snapshot.update(profiles)
                views = {}
                for identifier, owner in owners.items():
                    item = profiles.get(profile_key(owner))
                    if item is None or item["status"]["S"] != "live":
                        raise _Retry  # caught mid-merge by a concurrent writer
                    views[identifier] = ProfileView(
                        owner, item["created_at"]["S"],
                        frozenset(_parse_ident(k) for k in item.get("ids", {}).get("SS", [])))
                return views

            try:
                plan = plan_resolution(wanted, lookup, self._config)
                if plan.creates and not plan.add:
                    return None, plan
                profile_id = self._write(plan, snapshot)
                return profile_id, plan
            except _Retry:
                pass
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
            self.retries += 1
            self._sleep(random.uniform(0, 0.02 * 2**attempt))
        raise GraphConflict(f"identity graph kept changing for {len(wanted)} identifiers")

    def _write(self, plan: ResolutionPlan, snapshot: dict[str, dict[str, Any]]) -> str:
        actions: list[dict[str, Any]] = []
        if plan.creates:
            survivor = self._new_id()
            held: set[str] = set()
            actions.append({"Put": {
                "TableName": self._table,
                "Item": {"pk": {"S": profile_key(survivor)}, "status": {"S": "live"},
                         "created_at": {"S": self._now()}, "version": {"N": "1"},
                         "ids": {"SS": sorted(ident_key(i) for i in plan.add)}},
                "ConditionExpression": "attribute_not_exists(pk)",
            }})
        else:
            assert plan.survivor is not None
            survivor = plan.survivor
            item = snapshot[profile_key(survivor)]
            held = set(item.get("ids", {}).get("SS", []))
            if not plan.add and not plan.merged:
                return survivor  # nothing new: replaying an event writes nothing
            gained = {ident_key(i) for i in plan.add}
            actions.append({"Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": profile_key(survivor)}},
                "UpdateExpression": "SET version = version + :one, ids = :ids",
                "ConditionExpression": "version = :v AND #s = :live",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":one": {"N": "1"}, ":v": item["version"],
                                              ":live": {"S": "live"}, ":ids": {"SS": sorted(held | gained)}},
            }})
        previous_owner: dict[str, str] = {}  # identifier key -> the merged profile holding it
        for merged in plan.merged:
            item = snapshot[profile_key(merged)]
            previous_owner.update(dict.fromkeys(item.get("ids", {}).get("SS", []), merged))
            actions.append({"Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": profile_key(merged)}},
                "UpdateExpression": "SET #s = :merged, merged_into = :into, version = version + :one "
                                    "REMOVE ids",
                "ConditionExpression": "version = :v AND #s = :live",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":merged": {"S": "merged"}, ":into": {"S": survivor},
                                              ":one": {"N": "1"}, ":v": item["version"],
                                              ":live": {"S": "live"}},
            }})
        for identifier in plan.add:
            key = ident_key(identifier)
            current = snapshot.get(key)
            was = previous_owner.get(key) or (current["profile_id"]["S"] if current else None)
            if was is None:  # a new identifier: only if nobody took it meanwhile
                condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
            else:  # re-pointed from a merged profile: only if it still points there
                condition = {"ConditionExpression": "profile_id = :was",
                             "ExpressionAttributeValues": {":was": {"S": was}}}
            actions.append({"Put": {"TableName": self._table,
                                    "Item": {"pk": {"S": key}, "profile_id": {"S": survivor}},
                                    **condition}})
        if len(actions) > MAX_TRANSACTION_ITEMS:
            raise GraphConflict(f"a merge of {len(actions)} items exceeds one transaction")
        self._ddb.transact_write_items(TransactItems=actions)
        return survivor


class _Retry(Exception):
    """The snapshot was inconsistent (a concurrent merge in flight): read again."""
