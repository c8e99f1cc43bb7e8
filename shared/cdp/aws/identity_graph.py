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

import base64
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.identity.profile_state import ProfileState, merge_states, state_from_json, state_to_json
from cdp.identity.resolution import ProfileView, ResolutionPlan, plan_resolution
from cdp.keys import bounded
from cdp.observability import logger
from cdp.segmentation import account_activity
from cdp.segmentation.account_activity import activity_from_json, activity_to_json, unite_activity
from cdp.segmentation.catalog import ActiveSpec
from cdp.segmentation.definitions import AccountActivitySpec
from cdp.segmentation.tallies import StreamPosition, fold_events, merge_tallies, tallies_from_json, tallies_to_json

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


HOME_PREFIX = "a."
# What a profile item holds besides its key, status and identifiers (a home item too).
PROFILE_ATTRIBUTES = ("created_at", "updated_at", "version", "state", "agg", "merged_from")
MAX_HOME_VALUE_BYTES = 128


def home_profile_id(identifier: Identifier) -> str | None:
    """The id of a profile created from this anonymous id, if it may live in that id's item.

    A profile first seen with one anonymous id (most visitors) lives in that identifier's
    item, its **home** (``solo`` = true): one item rather than two, and when it later
    gains identifiers (a sign-up) the home item holds them, so no profile item is ever
    written for it. Its id encodes the anonymous id, so ``profile_id:`` lookups find the
    home; merged into another profile, the home becomes a pointer to the survivor, which
    keeps the old id resolvable.
    """
    raw = identifier.value.encode("utf-8")
    if identifier.type != "anonymous_id" or len(raw) > MAX_HOME_VALUE_BYTES:
        return None
    return HOME_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def home_ident_key(profile_id: str) -> str | None:
    """The identifier item a home profile id lives in (None for other ids)."""
    if not profile_id.startswith(HOME_PREFIX):
        return None
    encoded = profile_id.removeprefix(HOME_PREFIX)
    try:
        value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return ident_key(Identifier("anonymous_id", value))


def virtual_profile(ident_item: dict[str, Any]) -> dict[str, Any]:
    """A home identifier item seen as the profile item it stands for."""
    profile_id = ident_item["profile_id"]["S"]
    virtual = {"pk": {"S": profile_key(profile_id)}, "status": {"S": "live"},
               "ids": ident_item.get("ids") or {"SS": [ident_item["pk"]["S"]]},
               "_home": {"S": ident_item["pk"]["S"]}}
    for name in PROFILE_ATTRIBUTES:
        if name in ident_item:
            virtual[name] = ident_item[name]
    return virtual


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("TransactionCanceledException",
                                                          "ConditionalCheckFailedException")


class CommitConflict(Exception):
    """A batched commit met a concurrent change; the batch is resolved again, one event at a time."""


class _Units:
    """Union-find over item keys: the items one change touches must commit together."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def join(self, keys: Iterable[str]) -> None:
        roots = [self._find(k) for k in keys]
        for root in roots[1:]:
            self._parent[root] = roots[0]

    def _find(self, key: str) -> str:
        self._parent.setdefault(key, key)
        while self._parent[key] != key:
            self._parent[key] = self._parent[self._parent[key]]
            key = self._parent[key]
        return key

    def groups(self, keys: Iterable[str]) -> list[list[str]]:
        found: dict[str, list[str]] = {}
        for key in keys:
            found.setdefault(self._find(key), []).append(key)
        return list(found.values())


class DynamoIdentityGraph:
    """The graph and profile states, read once per batch and written in as few requests as possible.

    Changes go to a working copy (the read cache) and are committed by ``flush``: every
    changed item is put whole, conditional on what was read before the batch changed it
    (absent: ``attribute_not_exists``; a profile or account: its ``version``; an
    identifier: the profile it pointed to). The items of one change (a merge: survivor,
    merged profiles, re-pointed identifiers, merge log) always commit in one transaction;
    unrelated changes share transactions of up to 100 items. In ``batched`` mode the
    whole batch commits at the end, and a cancelled transaction raises
    ``CommitConflict``: the caller resolves the batch again in immediate mode, where
    each event's change commits at once and a conflict re-reads and re-plans that event.

    One instance per consumer: the working copy is not shared between threads.
    """

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
        self._cache: dict[str, dict[str, Any] | None] = {}  # key -> item (None: absent); the working copy
        self._expected: dict[str, dict[str, Any] | None] = {}  # changed key -> the item as read before
        self._units = _Units()
        self._log: dict[str, list[dict[str, Any]]] = {}  # unit key -> merge log items
        self._batched = False
        self.retries = 0  # events re-read and re-planned after a concurrent change
        self.merges = 0  # profiles merged into others by this graph
        self.transactions = 0  # TransactWriteItems requests made

    # --- reads -------------------------------------------------------------------------

    def begin_batch(self, config: IdentityConfig | None = None, batched: bool = False) -> None:
        """Start from DynamoDB's current state (and settings); ``batched``: commit at ``flush``."""
        self._cache.clear()
        self._discard()
        self._batched = batched
        if config is not None:
            self._config = config

    def _discard(self) -> None:
        for key in self._expected:
            self._cache.pop(key, None)  # read again rather than trust an uncommitted change
        for key in [k for k, item in self._cache.items() if item is not None and "_home" in item]:
            del self._cache[key]  # home profiles are read again from their identifier items
        self._expected.clear()
        self._units = _Units()
        self._log.clear()

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
                item = found.get(key)
                if item is not None and "solo" in item:  # a home profile: see home_profile_id
                    pkey = profile_key(item["profile_id"]["S"])
                    if self._cache.get(pkey) is None and pkey not in self._expected:
                        self._cache[pkey] = virtual_profile(item)
        # A home profile asked for by its id: read the identifier items they live in, together.
        homes = {k: ikey for k in unique if k.startswith("prof#") and self._cache.get(k) is None
                 and (ikey := home_ident_key(k.removeprefix("prof#"))) is not None}
        unread = [ikey for ikey in homes.values() if ikey not in self._cache]
        if unread:
            self._fetch(unread, consistent)
        for key, ikey in homes.items():
            ident = self._cache.get(ikey)
            if ident is None:
                continue
            if "solo" in ident and profile_key(ident["profile_id"]["S"]) == key:
                self._cache[key] = virtual_profile(ident)
            elif profile_key(ident["profile_id"]["S"]) != key:
                # The profile was merged away: its home identifier now points at the survivor.
                self._cache[key] = {"pk": {"S": key}, "status": {"S": "merged"},
                                    "merged_into": ident["profile_id"], "_virtual": {"BOOL": True}}

    def _get(self, keys: Iterable[str], consistent: bool = True) -> dict[str, dict[str, Any]]:
        """Items by key (absent ones left out), from the working copy where known."""
        wanted = list(keys)
        missing = [k for k in wanted if k not in self._cache]
        if missing:
            self._fetch(missing, consistent)
        return {k: item for k in wanted if (item := self._cache.get(k)) is not None}

    def _forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key not in self._expected:  # never drop an uncommitted change
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
        """Whether the identifier is in the graph (from the working copy)."""
        return ident_key(identifier) in self._get([ident_key(identifier)], consistent=False)

    # --- changes and commits ------------------------------------------------------------

    def _change(self, items: dict[str, dict[str, Any]], log: list[dict[str, Any]] | None = None) -> None:
        """Put changed items in the working copy, remembering what each was before the batch."""
        for key in items:
            if key not in self._expected:
                self._expected[key] = self._cache.get(key)
        self._cache.update(items)
        self._units.join(items)
        if log:
            anchor = next(iter(items))
            self._log.setdefault(anchor, []).extend(log)

    def _put(self, key: str) -> dict[str, Any]:
        item = dict(self._cache[key] or {})
        before = self._expected[key]
        if before is None:
            return {"Put": {"TableName": self._table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}
        if "version" in before:  # a profile or an account: the version read, and the next one
            item["version"] = {"N": str(int(before["version"]["N"]) + 1)}
            return {"Put": {"TableName": self._table, "Item": item, "ConditionExpression": "version = :v",
                            "ExpressionAttributeValues": {":v": before["version"]}}}
        return {"Put": {"TableName": self._table, "Item": item, "ConditionExpression": "profile_id = :was",
                        "ExpressionAttributeValues": {":was": before["profile_id"]}}}

    def _fold_home_profiles(self) -> None:
        """Changed home profiles go back into their identifier item; merged away, it points on."""
        for key in [k for k in self._expected if k.startswith("prof#")]:
            item = self._cache[key]
            if item is None or "_home" not in item:
                continue
            ikey = item["_home"]["S"]
            if ikey not in self._expected:  # the identifier item as read is what the commit expects
                self._expected[ikey] = self._cache.get(ikey)
            del self._expected[key]  # never a prof# item: the profile id decodes to its home
            if key in self._log:  # the merge log commits with the home item instead
                self._log.setdefault(ikey, []).extend(self._log.pop(key))
            if item["status"]["S"] == "live":
                home: dict[str, Any] = {"pk": {"S": ikey}, "profile_id": {"S": key.removeprefix("prof#")},
                                        "solo": {"BOOL": True}}
                home.update({n: item[n] for n in PROFILE_ATTRIBUTES if n in item})
                if item.get("ids", {}).get("SS", []) != [ikey]:
                    home["ids"] = item["ids"]
                self._cache[ikey] = home
            else:
                current = self._cache.get(ikey)
                if current is None or "solo" in current:  # re-pointed by the merge already, normally
                    self._cache[ikey] = {"pk": {"S": ikey}, "profile_id": item["merged_into"]}
            self._units.join([key, ikey])

    def flush(self) -> None:
        """Commit the working copy's changes; ``CommitConflict`` if a condition failed."""
        if not self._expected:
            return
        self._fold_home_profiles()
        orphaned = set(self._log) - set(self._expected)
        if orphaned:  # a merge log must commit with the change it records
            self._discard()
            raise RuntimeError(f"merge log without its change: {sorted(orphaned)[:3]}")
        transactions: list[list[dict[str, Any]]] = [[]]
        singles: list[dict[str, Any]] = []
        for unit in self._units.groups(self._expected):
            actions = [self._put(k) for k in sorted(unit)]
            actions += [{"Put": {"TableName": self._records_table, "Item": log}}
                        for k in unit for log in self._log.get(k, [])]
            if len(actions) == 1:
                # One item (a new visitor, a profile's new traits): a conditional PutItem is
                # as atomic as a transaction and bills half the write units.
                singles.append(actions[0]["Put"])
                continue
            if len(actions) > MAX_TRANSACTION_ITEMS:
                self._discard()
                if self._batched:  # a batch's changes of one profile add up: commit them per event
                    raise CommitConflict(f"a batch's change of {len(actions)} items exceeds one transaction")
                raise GraphConflict(f"a change of {len(actions)} items exceeds one transaction")
            if len(transactions[-1]) + len(actions) > MAX_TRANSACTION_ITEMS:
                transactions.append([])
            transactions[-1].extend(actions)
        committed = {k: self._cache[k] for k in self._expected}
        try:
            for actions in transactions:
                if actions:
                    self.transactions += 1
                    self._ddb.transact_write_items(TransactItems=actions)
            for put in singles:
                self._ddb.put_item(**put)
        except ClientError as exc:
            self._discard()
            if _conditional_failure(exc):
                raise CommitConflict(str(exc)) from exc
            raise
        for key, item in committed.items():  # the cache now holds what was written
            if item is not None and key in self._expected and self._expected[key] is not None \
                    and "version" in item:
                before = self._expected[key]
                assert before is not None
                item["version"] = {"N": str(int(before["version"]["N"]) + 1)}
        self._expected.clear()
        self._units = _Units()
        self._log.clear()

    def _commit_now(self) -> None:
        if not self._batched:
            self.flush()

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
            read: set[str] = set()  # what the plan read, to read again after a conflict

            def lookup(ids: list[Identifier], read: set[str] = read,
                       consistent: bool = consistent) -> dict[Identifier, ProfileView]:
                idents = self._get([ident_key(i) for i in ids], consistent)
                owners = {i: idents[ident_key(i)]["profile_id"]["S"] for i in ids if ident_key(i) in idents}
                profiles = self._get([profile_key(p) for p in set(owners.values())], consistent)
                read.update(ident_key(i) for i in ids)
                read.update(profile_key(p) for p in owners.values())
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
                profile_id = self._apply(plan, wanted, cause or {}, initial_state)
                self._commit_now()
                return profile_id, plan
            except _Retry:
                pass
            except CommitConflict:
                self._forget(read)
            consistent = True
            self.retries += 1
            if attempt:
                self._sleep(random.uniform(0, 0.02 * 2**attempt))
        raise GraphConflict(f"identity graph kept changing for {len(wanted)} identifiers")

    def _apply(self, plan: ResolutionPlan, wanted: list[Identifier], cause: dict[str, Any],
               initial_state: ProfileState | None) -> str:
        """Change the working copy as the plan says; returns the profile the event belongs to."""
        now = self._now()
        changed: dict[str, dict[str, Any]] = {}
        log: list[dict[str, Any]] = []
        if plan.creates:
            home = home_profile_id(plan.add[0]) if len(plan.add) == 1 else None
            survivor = home or self._new_id()
            changed[profile_key(survivor)] = {
                "pk": {"S": profile_key(survivor)}, "status": {"S": "live"},
                "created_at": {"S": now}, "updated_at": {"S": now}, "version": {"N": "1"},
                "ids": {"SS": sorted(ident_key(i) for i in plan.add)},
                "state": {"S": state_to_json(initial_state or ProfileState())}}
            if home:
                changed[profile_key(survivor)]["_home"] = {"S": ident_key(plan.add[0])}
        else:
            assert plan.survivor is not None
            survivor = plan.survivor
            if not plan.add and not plan.merged:
                return survivor  # nothing new: replaying an event writes nothing
            current = self._cache[profile_key(survivor)]
            assert current is not None
            held = set(current.get("ids", {}).get("SS", []))
            gained = {ident_key(i) for i in plan.add}
            after = dict(current, ids={"SS": sorted(held | gained)}, updated_at={"S": now})
            if plan.merged:
                state = state_from_json(current.get("state", {}).get("S"))
                tallies = tallies_from_json(current.get("agg", {}).get("S"))
                merged_from = set(current.get("merged_from", {}).get("SS", []))
                for merged in plan.merged:
                    other = self._cache[profile_key(merged)]
                    assert other is not None
                    state = merge_states(state, state_from_json(other.get("state", {}).get("S")))
                    tallies = merge_tallies(tallies, tallies_from_json(other.get("agg", {}).get("S")))
                    merged_from |= {merged, *other.get("merged_from", {}).get("SS", [])}
                after.update(state={"S": state_to_json(state)}, merged_from={"SS": sorted(merged_from)})
                if tallies.states or tallies.marks:
                    after["agg"] = {"S": tallies_to_json(tallies)}
            changed[profile_key(survivor)] = after
        for merged in plan.merged:
            item = self._cache[profile_key(merged)]
            assert item is not None
            changed[profile_key(merged)] = dict(
                {k: v for k, v in item.items() if k not in ("ids", "state", "agg")},
                status={"S": "merged"}, merged_into={"S": survivor}, updated_at={"S": now})
            if self._records_table:
                joined = [i.key() for i in wanted
                          if (self._cache.get(ident_key(i)) or {}).get("profile_id", {}).get("S") == merged]
                log.append({
                    "pk": {"S": f"p#{survivor}"}, "sk": {"S": f"merge#{merged}"},
                    "survivor": {"S": survivor}, "merged": {"S": merged},
                    "identifiers": {"L": [{"S": k} for k in joined]},
                    "message_id": {"S": str(cause.get("messageId", ""))},
                    "at": {"S": str(cause.get("timestamp", ""))}, "merged_at": {"S": now},
                })
        for merged in plan.merged:
            # Identifiers of a merged profile the plan never read: they point at it (the
            # commit is conditional on exactly that).
            for key in (self._expected.get(profile_key(merged)) or self._cache[profile_key(merged)] or {}
                        ).get("ids", {}).get("SS", []):
                if key not in self._cache:
                    self._cache[key] = {"pk": {"S": key}, "profile_id": {"S": merged}}
        for identifier in plan.add:
            key = ident_key(identifier)
            changed[key] = {"pk": {"S": key}, "profile_id": {"S": survivor}}
        self.merges += len(plan.merged)
        self._change(changed, log)
        return survivor

    # --- profile states ----------------------------------------------------------------

    def live_profile(self, profile_id: str) -> str | None:
        """Where a profile id of this batch lives now (from the working copy, reading what is missing)."""
        live = self._live(profile_id, consistent=False)
        return live[0] if live else None

    def apply_state(self, profile_id: str, delta: ProfileState,
                    events: Sequence[tuple[StreamPosition | None, dict[str, Any]]] = (),
                    specs: Mapping[str, ActiveSpec] | None = None,
                    now: datetime | None = None) -> str | None:
        """Merge a batch's state into a profile (following merges); returns the profile changed.

        ``events`` are folded into the profile's aggregate states for ``specs``
        (``cdp.segmentation.tallies``: each at most once, by its stream position).
        Nothing changes when the profile already has everything (a replay). The commit is
        conditional on the version read, so a concurrent merge or state write makes it
        read again and retry; the state is a semilattice and the tallies are folded
        again from what was read, so retrying is always safe.
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
            tallies = before = tallies_from_json(item.get("agg", {}).get("S"))
            if events and specs:
                tallies = fold_events(before, specs, events, now or datetime.now(UTC))
            if combined == current and tallies == before:
                return target
            after = dict(item, state={"S": state_to_json(combined)}, updated_at={"S": self._now()})
            if tallies != before:
                after["agg"] = {"S": tallies_to_json(tallies)}
            self._change({profile_key(target): after})
            try:
                self._commit_now()
            except CommitConflict:
                self._forget([profile_key(profile_id), profile_key(target)])
                consistent = True
                self.retries += 1
                if attempt:
                    self._sleep(random.uniform(0, 0.02 * 2**attempt))
                continue
            return target
        raise GraphConflict(f"profile {profile_id} kept changing")

    def apply_account_state(self, group_id: str, delta: ProfileState,
                            activity: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
                            activity_specs: Mapping[str, AccountActivitySpec] | None = None,
                            now: datetime | None = None) -> bool:
        """Merge a batch's ``group`` traits into an account (created on first sight), and
        unite its members' activity (spec id -> bucket -> member tags, for
        ``activity_specs``; ``cdp.segmentation.account_activity``): one write per account
        per batch, none when nothing changes (a member already counted that day).
        Returns whether the account was written (in immediate mode: committed)."""
        key = account_key(group_id)
        consistent = False
        for attempt in range(self._attempts):
            item = self._get([key], consistent).get(key)
            current = state_from_json(item.get("state", {}).get("S")) if item else ProfileState()
            combined = merge_states(current, delta)
            stored = activity_from_json(item.get("act", {}).get("S")) if item else {}
            united = stored
            if activity:
                united = unite_activity(stored, activity, activity_specs or {}, now or datetime.now(UTC))
                if united != stored and len(activity_to_json(united).encode()) > account_activity.MAX_ACTIVITY_BYTES:
                    logger.warning("account activity not added: the account item would be too large",
                                   extra={"group_id": group_id})
                    united = stored
            if item is not None and combined == current and united == stored:
                return False
            stamp = self._now()
            if item is None:
                item = {"pk": {"S": key}, "group_id": {"S": group_id}, "created_at": {"S": stamp},
                        "version": {"N": "1"}}
            after = dict(item, state={"S": state_to_json(combined)}, updated_at={"S": stamp})
            if united:
                after["act"] = {"S": activity_to_json(united)}
            else:
                after.pop("act", None)
            self._change({key: after})
            try:
                self._commit_now()
            except CommitConflict:
                self._forget([key])
                consistent = True
                self.retries += 1
                if attempt:
                    self._sleep(random.uniform(0, 0.02 * 2**attempt))
                continue
            return True
        raise GraphConflict("account kept changing")

    def accounts_of(self, profile_id: str) -> frozenset[str]:
        """The accounts a profile of this batch belongs to, from the working copy (after
        its ``apply_state``: its state with the batch's ``group`` calls)."""
        live = self._live(profile_id, consistent=False)
        return state_from_json(live[1].get("state", {}).get("S")).accounts if live else frozenset()

    def account_state(self, group_id: str) -> ProfileState | None:
        self.begin_batch()
        item = self._get([account_key(group_id)]).get(account_key(group_id))
        return state_from_json(item.get("state", {}).get("S")) if item else None


def account_key(group_id: str) -> str:
    return f"acct#{bounded(group_id)}"


class _Retry(Exception):
    """The snapshot was inconsistent (a concurrent merge in flight): read again."""
