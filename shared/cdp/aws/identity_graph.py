"""The identity graph and profile states in DynamoDB (table ``cdp-identity``), safe under concurrent consumers.

Items (docs/identity.md, "Storage layout"):
- ``ident#<type>:<value>`` -> ``profile_id``: which profile holds an identifier.
- ``prof#<profile_id>`` -> ``status`` (``live`` | ``merged``), ``merged_into``,
  ``created_at``, ``updated_at``, ``version``, ``ids`` (the identifier keys it holds),
  ``merged_from`` and ``state`` (traits, first/last seen, last context as JSON).

One event = read (``BatchGetItem`` of its identifiers, then of their profiles), plan
(``cdp.identity.resolution.plan_resolution``), and, if the graph changes, one
``TransactWriteItems`` that is conditional on everything the plan read: each touched
profile's ``version``, each re-pointed identifier's current owner, each new identifier's
absence. If another consumer changed any of it first, the transaction is cancelled and
the event is read (consistently) and planned again, so the result is what some
sequential order gives: no lost update, no identifier on two live profiles, no orphan.
A merge moves the merged profiles' states into the survivor and writes the merge log
in the same transaction. Merged profiles keep an item pointing at their survivor, so old
profile ids stay resolvable.

Reads are cached for one Kinesis batch (``begin_batch``/``prefetch``): a returning
person's events cost no read after the batch's first ``BatchGetItem``, and the cache may
be stale (eventually consistent reads) because every write is conditioned on the
versions it read; a failed condition drops the cached items and reads them again.
Profile states are written once per profile per batch (``apply_state``), by version,
and not at all when the batch adds nothing the state does not already have.
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
from cdp.identity.profile_state import ProfileState, merge_states, state_from_json, state_to_json
from cdp.identity.resolution import ProfileView, ResolutionPlan, plan_resolution
from cdp.keys import bounded

MAX_TRANSACTION_ITEMS = 100
MAX_BATCH_GET = 100
MAX_MERGE_CHAIN = 64


class GraphConflict(Exception):
    """The graph kept changing under this event; the caller retries the record later."""


def ident_key(identifier: Identifier) -> str:
    return f"ident#{identifier.type}:{bounded(identifier.value)}"


def profile_key(profile_id: str) -> str:
    return f"prof#{profile_id}"


def _parse_ident(key: str) -> Identifier:
    type_name, _, value = key.removeprefix("ident#").partition(":")
    return Identifier(type_name, value)


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("TransactionCanceledException",
                                                          "ConditionalCheckFailedException")


class DynamoIdentityGraph:
    def __init__(self, dynamodb: Any, table_name: str, config: IdentityConfig,
                 attempts: int = 8, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], str] = lambda: datetime.now(UTC).isoformat(timespec="microseconds"),
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
                 records_table: str | None = None) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._config = config
        self._attempts = attempts
        self._sleep = sleep
        self._now = now
        self._new_id = new_id
        self._records_table = records_table  # the events table, for the merge log
        self._cache: dict[str, dict[str, Any] | None] = {}  # key -> item (None: absent)
        self.retries = 0  # events re-read and re-planned after a concurrent change
        self.merges = 0  # profiles merged into others by this graph

    # --- reads -------------------------------------------------------------------------

    def begin_batch(self, config: IdentityConfig | None = None) -> None:
        """Forget what was read: a new batch starts from DynamoDB's current state (and settings)."""
        self._cache.clear()
        if config is not None:
            self._config = config

    def _fetch(self, keys: Iterable[str], consistent: bool) -> None:
        unique = [k for k in dict.fromkeys(keys)]
        for start in range(0, len(unique), MAX_BATCH_GET):
            chunk = unique[start:start + MAX_BATCH_GET]
            found: dict[str, dict[str, Any]] = {}
            request = {self._table: {"Keys": [{"pk": {"S": k}} for k in chunk], "ConsistentRead": consistent}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    found[item["pk"]["S"]] = item
                request = response.get("UnprocessedKeys") or {}
            for key in chunk:
                self._cache[key] = found.get(key)

    def _get(self, keys: Iterable[str], consistent: bool = True) -> dict[str, dict[str, Any]]:
        """Items by key (absent ones left out), from the batch cache where known."""
        wanted = list(keys)
        missing = [k for k in wanted if k not in self._cache]
        if missing:
            self._fetch(missing, consistent)
        return {k: item for k in wanted if (item := self._cache.get(k)) is not None}

    def _forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._cache.pop(key, None)

    def prefetch(self, identifiers: Iterable[Identifier], account_keys: Iterable[str] = ()) -> None:
        """Read a batch's identifiers and their profiles in as few requests as possible.

        Eventually consistent (half the read units): a stale item only makes a
        conditional write fail and the item be read again.
        """
        idents = self._get([ident_key(i) for i in identifiers] + list(account_keys), consistent=False)
        owners = {item["profile_id"]["S"] for item in idents.values() if "profile_id" in item}
        self._get([profile_key(p) for p in owners], consistent=False)

    def _live(self, profile_id: str, consistent: bool = True) -> tuple[str, dict[str, Any]] | None:
        """The live profile a (possibly merged) profile id resolves to, with its item."""
        for _ in range(MAX_MERGE_CHAIN):  # merge chains are short; the bound guards against cycles
            item = self._get([profile_key(profile_id)], consistent).get(profile_key(profile_id))
            if item is None:
                return None
            if item["status"]["S"] == "live":
                return profile_id, item
            profile_id = item["merged_into"]["S"]
        return None

    def profile_of(self, profile_id: str) -> str | None:
        """The live profile a (possibly merged) profile id resolves to (a fresh read)."""
        self.begin_batch()
        live = self._live(profile_id)
        return live[0] if live else None

    def lookup_identifier(self, identifier: Identifier) -> str | None:
        self.begin_batch()
        item = self._get([ident_key(identifier)]).get(ident_key(identifier))
        return self.profile_of(item["profile_id"]["S"]) if item else None

    def identifiers_of(self, profile_id: str) -> set[Identifier]:
        self.begin_batch()
        item = self._get([profile_key(profile_id)]).get(profile_key(profile_id))
        return {_parse_ident(k) for k in item.get("ids", {}).get("SS", [])} if item else set()

    def state_of(self, profile_id: str) -> ProfileState | None:
        self.begin_batch()
        live = self._live(profile_id)
        return state_from_json(live[1].get("state", {}).get("S")) if live else None

    def holds_identifier(self, identifier: Identifier) -> bool:
        """Whether the identifier is in the graph (from the batch cache)."""
        return ident_key(identifier) in self._get([ident_key(identifier)], consistent=False)

    # --- resolution ---------------------------------------------------------------------

    def resolve(self, identifiers: Iterable[Identifier], cause: dict[str, Any] | None = None,
                initial_state: ProfileState | None = None) -> tuple[str | None, ResolutionPlan]:
        """Apply one event's identifiers; returns its profile id (None without identifiers).

        ``cause`` (the event: ``messageId``, ``timestamp``) goes into the merge log;
        ``initial_state`` is the state a newly created profile starts with.
        """
        wanted = list(dict.fromkeys(identifiers))
        consistent = False
        for attempt in range(self._attempts):
            snapshot: dict[str, dict[str, Any]] = {}  # what the plan read, for the conditions

            def lookup(ids: list[Identifier], snapshot: dict[str, dict[str, Any]] = snapshot,
                       consistent: bool = consistent) -> dict[Identifier, ProfileView]:
                idents = self._get([ident_key(i) for i in ids], consistent)
                owners = {i: idents[ident_key(i)]["profile_id"]["S"] for i in ids if ident_key(i) in idents}
                profiles = self._get([profile_key(p) for p in set(owners.values())], consistent)
                snapshot.update(idents)
                snapshot.update(profiles)
                views = {}
                for identifier, owner in owners.items():
                    item = profiles.get(profile_key(owner))
                    if item is None or item["status"]["S"] != "live":
                        # Caught mid-merge by a concurrent writer, or a stale read.
                        self._forget([ident_key(identifier), profile_key(owner)])
                        raise _Retry
                    views[identifier] = ProfileView(
                        owner, item["created_at"]["S"],
                        frozenset(_parse_ident(k) for k in item.get("ids", {}).get("SS", [])))
                return views

            try:
                plan = plan_resolution(wanted, lookup, self._config)
                if plan.creates and not plan.add:
                    return None, plan
                profile_id = self._write(plan, snapshot, wanted, cause or {}, initial_state)
                return profile_id, plan
            except _Retry:
                pass
            except ClientError as exc:
                if not _conditional_failure(exc):
                    raise
                self._forget(snapshot)
                self._forget(ident_key(i) for i in wanted)
            consistent = True
            self.retries += 1
            if attempt:
                self._sleep(random.uniform(0, 0.02 * 2**attempt))
        raise GraphConflict(f"identity graph kept changing for {len(wanted)} identifiers")

    def _write(self, plan: ResolutionPlan, snapshot: dict[str, dict[str, Any]], wanted: list[Identifier],
               cause: dict[str, Any], initial_state: ProfileState | None) -> str:
        now = self._now()
        actions: list[dict[str, Any]] = []
        written: dict[str, dict[str, Any]] = {}  # the items as they will be, for the cache
        if plan.creates:
            survivor = self._new_id()
            created: dict[str, Any] = {
                "pk": {"S": profile_key(survivor)}, "status": {"S": "live"},
                "created_at": {"S": now}, "updated_at": {"S": now}, "version": {"N": "1"},
                "ids": {"SS": sorted(ident_key(i) for i in plan.add)},
                "state": {"S": state_to_json(initial_state or ProfileState())}}
            actions.append({"Put": {"TableName": self._table, "Item": created,
                                    "ConditionExpression": "attribute_not_exists(pk)"}})
            written[profile_key(survivor)] = created
        else:
            assert plan.survivor is not None
            survivor = plan.survivor
            current = snapshot[profile_key(survivor)]
            held = set(current.get("ids", {}).get("SS", []))
            if not plan.add and not plan.merged:
                return survivor  # nothing new: replaying an event writes nothing
            gained = {ident_key(i) for i in plan.add}
            state = state_from_json(current.get("state", {}).get("S"))
            merged_from = set(current.get("merged_from", {}).get("SS", []))
            for merged in plan.merged:
                other = snapshot[profile_key(merged)]
                state = merge_states(state, state_from_json(other.get("state", {}).get("S")))
                merged_from |= {merged, *other.get("merged_from", {}).get("SS", [])}
            version = str(int(current["version"]["N"]) + 1)
            values: dict[str, Any] = {":v": current["version"], ":next": {"N": version}, ":live": {"S": "live"},
                                      ":ids": {"SS": sorted(held | gained)}, ":now": {"S": now}}
            update = "SET version = :next, ids = :ids, updated_at = :now"
            if plan.merged:
                values[":state"] = {"S": state_to_json(state)}
                values[":from"] = {"SS": sorted(merged_from)}
                update += ", #st = :state, merged_from = :from"
            actions.append({"Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": profile_key(survivor)}},
                "UpdateExpression": update,
                "ConditionExpression": "version = :v AND #s = :live",
                "ExpressionAttributeNames": {"#s": "status", **({"#st": "state"} if plan.merged else {})},
                "ExpressionAttributeValues": values,
            }})
            after = dict(current, version={"N": version}, ids={"SS": sorted(held | gained)}, updated_at={"S": now})
            if plan.merged:
                after.update(state={"S": state_to_json(state)}, merged_from={"SS": sorted(merged_from)})
            written[profile_key(survivor)] = after
        previous_owner: dict[str, str] = {}  # identifier key -> the merged profile holding it
        for merged in plan.merged:
            item = snapshot[profile_key(merged)]
            previous_owner.update(dict.fromkeys(item.get("ids", {}).get("SS", []), merged))
            next_version = str(int(item["version"]["N"]) + 1)
            actions.append({"Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": profile_key(merged)}},
                "UpdateExpression": "SET #s = :merged, merged_into = :into, version = :next, updated_at = :now "
                                    "REMOVE ids, #st",
                "ConditionExpression": "version = :v AND #s = :live",
                "ExpressionAttributeNames": {"#s": "status", "#st": "state"},
                "ExpressionAttributeValues": {":merged": {"S": "merged"}, ":into": {"S": survivor},
                                              ":next": {"N": next_version}, ":v": item["version"],
                                              ":live": {"S": "live"}, ":now": {"S": now}},
            }})
            gone = {k: v for k, v in item.items() if k not in ("ids", "state")}
            written[profile_key(merged)] = dict(gone, status={"S": "merged"}, merged_into={"S": survivor},
                                                version={"N": next_version}, updated_at={"S": now})
            if self._records_table:
                joined = [i.key() for i in wanted
                          if snapshot.get(ident_key(i), {}).get("profile_id", {}).get("S") == merged]
                actions.append({"Put": {"TableName": self._records_table, "Item": {
                    "pk": {"S": f"p#{survivor}"}, "sk": {"S": f"merge#{merged}"},
                    "survivor": {"S": survivor}, "merged": {"S": merged},
                    "identifiers": {"L": [{"S": k} for k in joined]},
                    "message_id": {"S": str(cause.get("messageId", ""))},
                    "at": {"S": str(cause.get("timestamp", ""))}, "merged_at": {"S": now},
                }}})
        for identifier in plan.add:
            key = ident_key(identifier)
            current_ident = snapshot.get(key)
            was = previous_owner.get(key) or (current_ident["profile_id"]["S"] if current_ident else None)
            if was is None:  # a new identifier: only if nobody took it meanwhile
                condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
            else:  # re-pointed from a merged profile: only if it still points there
                condition = {"ConditionExpression": "profile_id = :was",
                             "ExpressionAttributeValues": {":was": {"S": was}}}
            item = {"pk": {"S": key}, "profile_id": {"S": survivor}}
            actions.append({"Put": {"TableName": self._table, "Item": item, **condition}})
            written[key] = item
        if len(actions) > MAX_TRANSACTION_ITEMS:
            raise GraphConflict(f"a merge of {len(actions)} items exceeds one transaction")
        self._ddb.transact_write_items(TransactItems=actions)
        self.merges += len(plan.merged)
        self._cache.update(written)
        return survivor

    # --- profile states ----------------------------------------------------------------

    def live_profile(self, profile_id: str) -> str | None:
        """Where a profile id of this batch lives now (from the cache, reading what is missing)."""
        live = self._live(profile_id, consistent=False)
        return live[0] if live else None

    def apply_state(self, profile_id: str, delta: ProfileState) -> str | None:
        """Merge a batch's state into a profile (following merges); returns the profile written.

        No write when the profile already has everything (a replay). The write is
        conditional on the version read, so a concurrent merge or state write makes it
        read again and retry; the state is a semilattice, so retrying is always safe.
        """
        consistent = False
        for attempt in range(self._attempts):
            live = self._live(profile_id, consistent)
            if live is None:
                if consistent:
                    raise GraphConflict(f"profile {profile_id} vanished")  # never deleted: a bug
                consistent = True
                self._forget([profile_key(profile_id)])
                continue
            target, item = live
            current = state_from_json(item.get("state", {}).get("S"))
            combined = merge_states(current, delta)
            if combined == current:
                return target
            now = self._now()
            version = str(int(item["version"]["N"]) + 1)
            text = state_to_json(combined)
            try:
                self._ddb.update_item(
                    TableName=self._table, Key={"pk": {"S": profile_key(target)}},
                    UpdateExpression="SET #st = :state, version = :next, updated_at = :now",
                    ConditionExpression="version = :v AND #s = :live",
                    ExpressionAttributeNames={"#s": "status", "#st": "state"},
                    ExpressionAttributeValues={":state": {"S": text}, ":next": {"N": version},
                                               ":v": item["version"], ":live": {"S": "live"}, ":now": {"S": now}},
                )
            except ClientError as exc:
                if not _conditional_failure(exc):
                    raise
                self._forget([profile_key(profile_id), profile_key(target)])
                consistent = True
                self.retries += 1
                if attempt:
                    self._sleep(random.uniform(0, 0.02 * 2**attempt))
                continue
            self._cache[profile_key(target)] = dict(item, state={"S": text}, version={"N": version},
                                                    updated_at={"S": now})
            return target
        raise GraphConflict(f"profile {profile_id} kept changing")

    def apply_account_state(self, group_id: str, delta: ProfileState) -> None:
        """Merge a batch's ``group`` traits into an account (created on first sight)."""
        key = account_key(group_id)
        consistent = False
        for attempt in range(self._attempts):
            item = self._get([key], consistent).get(key)
            current = state_from_json(item.get("state", {}).get("S")) if item else ProfileState()
            combined = merge_states(current, delta)
            if item is not None and combined == current:
                return
            now = self._now()
            text = state_to_json(combined)
            if item is None:
                new_item = {"pk": {"S": key}, "group_id": {"S": group_id}, "created_at": {"S": now},
                            "updated_at": {"S": now}, "version": {"N": "1"}, "state": {"S": text}}
                request: dict[str, Any] = {"Item": new_item, "ConditionExpression": "attribute_not_exists(pk)"}
            else:
                new_item = dict(item, state={"S": text}, updated_at={"S": now},
                                version={"N": str(int(item["version"]["N"]) + 1)})
                request = {"Item": new_item, "ConditionExpression": "version = :v",
                           "ExpressionAttributeValues": {":v": item["version"]}}
            try:
                self._ddb.put_item(TableName=self._table, **request)
            except ClientError as exc:
                if not _conditional_failure(exc):
                    raise
                self._forget([key])
                consistent = True
                self.retries += 1
                if attempt:
                    self._sleep(random.uniform(0, 0.02 * 2**attempt))
                continue
            self._cache[key] = new_item
            return
        raise GraphConflict("account kept changing")

    def account_state(self, group_id: str) -> ProfileState | None:
        self.begin_batch()
        item = self._get([account_key(group_id)]).get(account_key(group_id))
        return state_from_json(item.get("state", {}).get("S")) if item else None


def account_key(group_id: str) -> str:
    return f"acct#{bounded(group_id)}"


class _Retry(Exception):
    """The snapshot was inconsistent (a concurrent merge in flight): read again."""
