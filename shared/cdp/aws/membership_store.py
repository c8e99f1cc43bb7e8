"""Audience memberships in the memberships table (``cdp.resources.MEMBERSHIPS_TABLE``).

One item per profile and audience, written when the profile enters or exits the
audience, or when its ``next_check`` changes:

* ``profile_id`` (partition key), ``audience_id`` (sort key);
* ``member`` (BOOL), ``entered_at`` / ``exited_at`` (ISO 8601, the last entry and exit);
* ``profile_version`` (N): the profile item version the decision was made from, and
  ``changed_version`` (N): the version of the last entry or exit;
* ``member_of`` = ``audience_id`` while a member, absent otherwise (sparse index ``members``);
* ``next_check`` = ``<UTC hour>#<shard 00-15>`` when a sliding window may flip the
  membership then (sparse index ``due``), absent otherwise;
* ``updated_at``.

Two ways to write, chosen by the caller:

* immediate (default): one ``PutItem`` per decision, conditional on
  ``profile_version <= :version``, so a record delivered late or out of band (a redrive
  running beside the live stream) never overwrites a newer decision;
* ``buffered``: the decisions of a whole batch of stream records are kept in memory and
  written by ``flush`` with ``BatchWriteItem`` (25 items a request, the same write units,
  about 1 ms of client CPU per request instead of per item). Unconditional, which is safe
  only where the writer is the one ordered reader of a profile's changes: the stream
  evaluator. A profile's memberships are written only from its own profile item's stream
  records, which the event source mapping delivers in order and never to two invocations
  at once; a redelivered (older) image is caught before writing, because ``decide``
  compares it with the stored ``profile_version`` it read. Reads made while a buffer
  holds a profile's decisions see them (a profile changed twice in one batch).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdp.aws.dynamo import batch_write
from cdp.segmentation.membership import Decision, Membership

MEMBERS_INDEX = "members"
DUE_INDEX = "due"
DUE_SHARDS = 16
MAX_PAGE = 1000


def due_key(hour: str, profile_id: str) -> str:
    """``next_check`` as stored: the hour bucket and the profile's shard of the ``due`` index."""
    shard = int(hashlib.sha256(profile_id.encode()).hexdigest()[:4], 16) % DUE_SHARDS
    return f"{hour}#{shard:02d}"


def membership_of_item(item: dict[str, Any]) -> Membership:
    def text(name: str) -> str | None:
        value = item.get(name)
        return value["S"] if value else None

    check = text("next_check")
    return Membership(
        audience_id=item["audience_id"]["S"],
        member=bool(item.get("member", {}).get("BOOL", False)),
        profile_version=int(item.get("profile_version", {}).get("N", "0")),
        changed_version=int(item.get("changed_version", {}).get("N", "0")),
        entered_at=text("entered_at"),
        exited_at=text("exited_at"),
        next_check=check.partition("#")[0] if check else None,
    )


@dataclass(frozen=True)
class MembersPage:
    """One page of an audience's members: profile ids, and the cursor of the next page (None: last)."""

    profile_ids: list[str]
    cursor: str | None


class InvalidCursor(ValueError):
    """A cursor this store did not hand out."""


def _encode_cursor(key: dict[str, Any]) -> str:
    plain = {name: value["S"] for name, value in key.items()}
    return base64.urlsafe_b64encode(json.dumps(plain, sort_keys=True).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, audience_id: str) -> dict[str, Any]:
    try:
        plain = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc
    if not isinstance(plain, dict) or plain.get("member_of") != audience_id \
            or set(plain) != {"member_of", "profile_id", "audience_id"} \
            or not all(isinstance(v, str) for v in plain.values()):
        raise InvalidCursor("cursor is not one of this audience's pages")
    return {name: {"S": value} for name, value in plain.items()}


class MembershipStore:
    """Reads and writes memberships; see the module docstring for the item."""

    def __init__(self, dynamodb: Any, table_name: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC), *, buffered: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._now = now
        self._sleep = sleep
        self.buffered = buffered
        self.conflicts = 0  # writes refused because a newer decision was stored
        # buffered mode: items to write by key, and what they say, by profile then audience
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._written: dict[str, dict[str, Membership]] = {}

    def of_profile(self, profile_id: str) -> dict[str, Membership]:
        """Every stored membership of the profile (current and former), by audience id.

        One consistent Query of the main key: the evaluator decides from it.
        """
        found: dict[str, Membership] = {}
        request: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True,
                                   "KeyConditionExpression": "profile_id = :p",
                                   "ExpressionAttributeValues": {":p": {"S": profile_id}}}
        while True:
            page = self._ddb.query(**request)
            for item in page.get("Items", []):
                membership = membership_of_item(item)
                found[membership.audience_id] = membership
            if "LastEvaluatedKey" not in page:
                found.update(self._written.get(profile_id, {}))
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def some_of_profile(self, profile_id: str, audience_ids: Iterable[str]) -> dict[str, Membership]:
        """The profile's stored memberships of these audiences only (one consistent
        BatchGetItem per 100): what a change touching a few audiences needs to read."""
        return self.some_of_profiles({profile_id: audience_ids}).get(profile_id, {})

    def some_of_profiles(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, Membership]]:
        """For several profiles at once (a batch of changes): profile id -> audience id -> membership."""
        keys = sorted({(pid, aid) for pid, audiences in wanted.items() for aid in audiences})
        found: dict[str, dict[str, Membership]] = {}
        for start in range(0, len(keys), 100):
            chunk = [{"profile_id": {"S": p}, "audience_id": {"S": a}} for p, a in keys[start:start + 100]]
            request: dict[str, Any] = {self._table: {"Keys": chunk, "ConsistentRead": True}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    membership = membership_of_item(item)
                    found.setdefault(item["profile_id"]["S"], {})[membership.audience_id] = membership
                request = response.get("UnprocessedKeys") or {}
        for pid, audiences in wanted.items():
            buffered = self._written.get(pid) or {}
            for aid in audiences if buffered else ():
                if aid in buffered:
                    found.setdefault(pid, {})[aid] = buffered[aid]
        return found

    def leave_all(self, profile_id: str, at: datetime | None = None) -> int:
        """Record the exits of a profile that is no longer live (conditional writes, so a
        newer decision is never overwritten); returns how many. No event is emitted: as for
        any merged-away profile (``cdp.segmentation.evaluator``)."""
        moment = (at or self._now()).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        stored = self.of_profile(profile_id)
        exits = [Decision(aid, False, "exited", m.profile_version, moment)
                 for aid, m in sorted(stored.items()) if m.member]
        return len(self.apply(profile_id, exits, stored))

    def audiences_of(self, profile_id: str) -> list[str]:
        """The ids of the audiences the profile is in now."""
        return sorted(aid for aid, m in self.of_profile(profile_id).items() if m.member)

    def members(self, audience_id: str, limit: int = 100, cursor: str | None = None) -> MembersPage:
        """The audience's current members, by profile id, ``limit`` (1-1000) at a time.

        Reads the sparse ``members`` index (eventually consistent: an entry shows within
        a second or so). ``InvalidCursor`` for a cursor not handed out for this audience.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1-{MAX_PAGE}")
        request: dict[str, Any] = {"TableName": self._table, "IndexName": MEMBERS_INDEX, "Limit": limit,
                                   "KeyConditionExpression": "member_of = :a",
                                   "ExpressionAttributeValues": {":a": {"S": audience_id}}}
        if cursor:
            request["ExclusiveStartKey"] = _decode_cursor(cursor, audience_id)
        page = self._ddb.query(**request)
        ids = [item["profile_id"]["S"] for item in page.get("Items", [])]
        last = page.get("LastEvaluatedKey")
        return MembersPage(ids, _encode_cursor(last) if last else None)

    def apply(self, profile_id: str, decisions: Sequence[Decision],
              stored: dict[str, Membership]) -> list[Decision]:
        """Write the decisions (not replays); returns those written or replayed, in order.

        A decision whose write is refused (a newer decision is stored: a late, older
        image) is dropped, and so is its event. Buffered: kept for ``flush``.
        """
        done: list[Decision] = []
        for decision in decisions:
            if decision.replay:
                done.append(decision)
                continue
            item = self._item(profile_id, decision, stored.get(decision.audience_id))
            if self.buffered:
                self._pending[(profile_id, decision.audience_id)] = item
                self._written.setdefault(profile_id, {})[decision.audience_id] = membership_of_item(item)
                done.append(decision)
            elif self._put(item, decision):
                done.append(decision)
        return done

    def flush(self) -> int:
        """Write the buffered decisions (BatchWriteItem, retrying unprocessed items); returns
        how many. Raises if some stay unprocessed: the caller fails its batch, which is
        delivered again and decided again from what was stored."""
        items, self._pending, self._written = list(self._pending.values()), {}, {}
        batch_write(self._ddb, self._table, [{"PutRequest": {"Item": item}} for item in items], self._sleep)
        return len(items)

    def discard(self) -> None:
        """Forget the buffered decisions (their batch is delivered again)."""
        self._pending, self._written = {}, {}

    def _item(self, profile_id: str, decision: Decision, before: Membership | None) -> dict[str, Any]:
        now = self._now().astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        item: dict[str, Any] = {
            "profile_id": {"S": profile_id}, "audience_id": {"S": decision.audience_id},
            "member": {"BOOL": decision.member}, "profile_version": {"N": str(decision.profile_version)},
            "changed_version": {"N": str(decision.profile_version if decision.transition
                                         else (before.changed_version if before else 0))},
            "updated_at": {"S": now},
        }
        entered = decision.at if decision.transition == "entered" else (before.entered_at if before else None)
        exited = decision.at if decision.transition == "exited" else (before.exited_at if before else None)
        if entered:
            item["entered_at"] = {"S": entered}
        if exited:
            item["exited_at"] = {"S": exited}
        if decision.member:
            item["member_of"] = {"S": decision.audience_id}
        if decision.next_check:
            item["next_check"] = {"S": due_key(decision.next_check, profile_id)}
        return item

    def _put(self, item: dict[str, Any], decision: Decision) -> bool:
        try:
            self._ddb.put_item(
                TableName=self._table, Item=item,
                ConditionExpression="attribute_not_exists(profile_id) OR profile_version <= :v",
                ExpressionAttributeValues={":v": {"N": str(decision.profile_version)}})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            self.conflicts += 1
            return False
        return True
