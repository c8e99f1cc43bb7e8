"""Batch syncs on AWS: the adapters of ``cdp.activation.sync``'s ports.

* **Members** (:class:`DynamoMembers`): a ``Query`` of the memberships table's sparse
  ``members`` index (``member_of`` = audience id, sorted by ``profile_id``; only current
  members have ``member_of``), 1,000 ids a page, projecting ``profile_id`` only. A resumed
  sync starts after its cursor with a sort key condition (``profile_id > :after``), so no
  page before it is read. (Not an ``ExclusiveStartKey`` made up from the cursor: the API
  documents only a returned ``LastEvaluatedKey`` as valid there, and the cursor's item
  may have left the index since.) A global secondary index is eventually consistent: an entry or exit of the
  last second or so may be missing; the next sync sends it. The sort is by UTF-8 bytes,
  which for valid text is the order of Python's ``str`` comparison, the merge's.
* **Snapshots** (:class:`S3Snapshots`), in the bucket the caller names::

      snapshots/<destination>/<audience>/<sync id>/part-00001.txt.gz   one id a line, sorted
      snapshots/<destination>/<audience>/<sync id>/manifest.json       {"parts": [...], "members": n, ...}

  A part is written at each checkpoint (a resumed sync writes the next number; one
  rewritten after a crash is overwritten), so no multipart upload has to survive between
  invocations; the manifest, written last, makes the snapshot exist (its key is what the
  state item holds). Parts are read one after the other through a streaming gunzip of the
  body (64 KB reads): memory holds a read, never a part. Concatenated, the parts are one
  gzip stream of the sorted ids (``cat part-* | gunzip``). A resumed sync reads the
  previous snapshot from its start and skips ids up to the cursor (gunzip reads about a
  million ids a second). Sync ids sort by time; pruning keeps the two snapshots the
  last sync used (its base and its own) and deletes the others.
* **State** (:class:`DynamoSyncStates`): one item per destination and audience in the
  segments table, ``pk = "sync#<destination>#<audience>"`` (ids are slugs, so ``#``
  cannot occur in them). Attributes: ``status`` (running|done|failed), ``sync_id``,
  ``started_at``, ``updated_at``, ``finished_at``, ``last_success_at``, ``snapshot_key``
  (last successful), ``base_snapshot_key``/``base_members`` (what the running sync diffs
  against), ``cursor``, ``parts``, ``counts`` (map: adds, removes, failed, chunks, merged,
  members), ``failures`` (the first reasons, no personal data: destinations' reasons
  never carry any), ``stopped``, ``not_before``, ``error``; and the lease
  ``lease_owner``/``lease_until``. Every write of the state is conditional on
  ``lease_owner`` being the writer, and the lease is taken only when absent or expired,
  so two invocations never work one sync at once.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdp.activation.sync import (
    BatchSync,
    LeaseLost,
    SyncCounts,
    SyncState,
    iso,
)
from cdp.aws.membership_store import MAX_PAGE, MEMBERS_INDEX

STATE_PREFIX = "sync#"
SNAPSHOT_PREFIX = "snapshots"
SPOOL_BYTES = 8 * 1024 * 1024  # a compressed part held in memory before it spools to /tmp
READ_BYTES = 64 * 1024
DELETE_BATCH = 1000  # DeleteObjects: at most 1,000 keys a request


def state_key(destination_id: str, audience_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"{STATE_PREFIX}{destination_id}#{audience_id}"}}


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


# --- members ------------------------------------------------------------------------------------


class DynamoMembers:
    """An audience's current members from the ``members`` index, streamed page by page."""

    def __init__(self, dynamodb: Any, memberships_table: str, page_size: int = MAX_PAGE) -> None:
        if not 1 <= page_size <= MAX_PAGE:
            raise ValueError(f"page_size must be 1-{MAX_PAGE}")
        self._ddb = dynamodb
        self._table = memberships_table
        self._page = page_size

    def members(self, audience_id: str, after: str | None) -> Iterator[str]:
        request: dict[str, Any] = {
            "TableName": self._table, "IndexName": MEMBERS_INDEX, "Limit": self._page,
            "KeyConditionExpression": "member_of = :a", "ProjectionExpression": "profile_id",
            "ExpressionAttributeValues": {":a": {"S": audience_id}},
        }
        if after is not None:
            request["KeyConditionExpression"] = "member_of = :a AND profile_id > :after"
            request["ExpressionAttributeValues"][":after"] = {"S": after}
        while True:
            page = self._ddb.query(**request)
            for item in page.get("Items", []):
                yield item["profile_id"]["S"]
            following = page.get("LastEvaluatedKey")
            if following is None:
                return
            request["ExclusiveStartKey"] = following


# --- snapshots ----------------------------------------------------------------------------------


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """The lines of a gzip stream (one or more members) given as byte chunks, decompressed as read."""
    inflater = zlib.decompressobj(wbits=31)
    carry = b""
    for chunk in chunks:
        data = inflater.decompress(chunk)
        while inflater.eof:  # a new gzip member follows (concatenated parts)
            rest = inflater.unused_data
            inflater = zlib.decompressobj(wbits=31)
            data += inflater.decompress(rest)
        if not data:
            continue
        lines = (carry + data).split(b"\n")
        carry = lines.pop()
        for line in lines:
            if line:
                yield line.decode("utf-8")
    data = inflater.flush()
    tail = carry + data
    for line in tail.split(b"\n"):
        if line:
            yield line.decode("utf-8")


class S3Snapshots:
    """Snapshots as part objects and a manifest; see the module docstring."""

    def __init__(self, s3: Any, bucket: str, prefix: str = SNAPSHOT_PREFIX) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._prefix = prefix.rstrip("/")

    def sync_prefix(self, destination_id: str, audience_id: str, sync_id: str) -> str:
        return f"{self._prefix}/{destination_id}/{audience_id}/{sync_id}/"

    def part_key(self, destination_id: str, audience_id: str, sync_id: str, number: int) -> str:
        return f"{self.sync_prefix(destination_id, audience_id, sync_id)}part-{number:05d}.txt.gz"

    def _manifest(self, key: str) -> dict[str, Any]:
        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        manifest: dict[str, Any] = json.loads(body)
        return manifest

    def read(self, key: str, after: str | None) -> Iterator[str]:
        for part in self._manifest(key)["parts"]:
            body = self._s3.get_object(Bucket=self._bucket, Key=part)["Body"]
            try:
                for pid in _lines(body.iter_chunks(READ_BYTES)):
                    if after is None or pid > after:
                        yield pid
            finally:
                body.close()

    def size(self, key: str) -> int:
        return int(self._manifest(key)["members"])

    def write_part(self, destination_id: str, audience_id: str, sync_id: str, number: int,
                   ids: Iterable[str]) -> None:
        # Streamed through gzip into a spooled file (memory up to SPOOL_BYTES, then /tmp),
        # so a part never needs its ids held as one string.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as body:
            with gzip.GzipFile(fileobj=body, mode="wb", compresslevel=6, mtime=0) as packed:
                lines: list[str] = []
                for pid in ids:
                    lines.append(pid)
                    if len(lines) >= 10_000:
                        packed.write(("\n".join(lines) + "\n").encode("utf-8"))
                        lines = []
                if lines:
                    packed.write(("\n".join(lines) + "\n").encode("utf-8"))
            body.seek(0)
            self._s3.put_object(Bucket=self._bucket,
                                Key=self.part_key(destination_id, audience_id, sync_id, number),
                                Body=body, ContentType="application/gzip")

    def finish(self, destination_id: str, audience_id: str, sync_id: str, parts: int, members: int) -> str:
        key = self.sync_prefix(destination_id, audience_id, sync_id) + "manifest.json"
        manifest = {"format": 1, "destination_id": destination_id, "audience_id": audience_id, "sync_id": sync_id,
                    "members": members,
                    "parts": [self.part_key(destination_id, audience_id, sync_id, n) for n in range(1, parts + 1)]}
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=json.dumps(manifest).encode(),
                            ContentType="application/json")
        return key

    def prune(self, destination_id: str, audience_id: str, keep: Collection[str]) -> int:
        root = f"{self._prefix}/{destination_id}/{audience_id}/"
        syncs: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=root,
                                                                       Delimiter="/"):
            syncs.extend(p["Prefix"][len(root):].rstrip("/") for p in page.get("CommonPrefixes", []))
        removed = 0
        for sync_id in syncs:
            if sync_id in keep:
                continue
            self._delete_prefix(f"{root}{sync_id}/")
            removed += 1
        return removed

    def _delete_prefix(self, prefix: str) -> None:
        keys: list[dict[str, str]] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
            keys.extend({"Key": o["Key"]} for o in page.get("Contents", []))
        for start in range(0, len(keys), DELETE_BATCH):
            self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": keys[start:start + DELETE_BATCH],
                                                                 "Quiet": True})


# --- state ----------------------------------------------------------------------------------------

_TEXT_FIELDS = ("status", "sync_id", "started_at", "updated_at", "base_snapshot_key", "cursor", "snapshot_key",
                "last_success_at", "finished_at", "stopped", "not_before", "error")


def state_of_item(item: dict[str, Any]) -> SyncState | None:
    """The state stored in an item; None for an item holding only a lease (no sync started)."""
    if "status" not in item:
        return None
    _, destination_id, audience_id = item["pk"]["S"].split("#", 2)

    def text(name: str) -> str | None:
        value = item.get(name)
        return value["S"] if value else None

    counts = {k: int(v["N"]) for k, v in item.get("counts", {}).get("M", {}).items()}
    base_members = item.get("base_members")
    return SyncState(
        destination_id=destination_id, audience_id=audience_id, status=item["status"]["S"],
        sync_id=item["sync_id"]["S"], started_at=item["started_at"]["S"], updated_at=item["updated_at"]["S"],
        base_snapshot_key=text("base_snapshot_key"), base_members=int(base_members["N"]) if base_members else None,
        cursor=text("cursor"), parts=int(item.get("parts", {}).get("N", "0")),
        counts=SyncCounts(**{k: v for k, v in counts.items() if k in SyncCounts.__dataclass_fields__}),
        failures=tuple(v["S"] for v in item.get("failures", {}).get("L", [])),
        snapshot_key=text("snapshot_key"), last_success_at=text("last_success_at"),
        finished_at=text("finished_at"), stopped=text("stopped"), not_before=text("not_before"),
        error=text("error"))


class DynamoSyncStates:
    """Sync state items in the segments table, written under a lease."""

    def __init__(self, dynamodb: Any, segments_table: str) -> None:
        self._ddb = dynamodb
        self._table = segments_table

    def _item(self, destination_id: str, audience_id: str) -> dict[str, Any] | None:
        item = self._ddb.get_item(TableName=self._table, Key=state_key(destination_id, audience_id),
                                  ConsistentRead=True).get("Item")
        return dict(item) if item is not None else None

    def load(self, destination_id: str, audience_id: str) -> SyncState | None:
        item = self._item(destination_id, audience_id)
        return state_of_item(item) if item is not None else None

    def lease_of(self, destination_id: str, audience_id: str) -> tuple[str | None, str | None]:
        """(owner, until) of the lease, if any."""
        item = self._item(destination_id, audience_id) or {}
        return item.get("lease_owner", {}).get("S"), item.get("lease_until", {}).get("S")

    def acquire(self, destination_id: str, audience_id: str, owner: str, until: datetime, now: datetime) -> bool:
        try:
            self._ddb.update_item(
                TableName=self._table, Key=state_key(destination_id, audience_id),
                UpdateExpression="SET lease_until = :until, lease_owner = :me",
                ConditionExpression="attribute_not_exists(lease_until) OR lease_until < :now OR lease_owner = :me",
                ExpressionAttributeValues={":until": {"S": iso(until)}, ":me": {"S": owner}, ":now": {"S": iso(now)}})
        except ClientError as exc:
            if _conditional_failure(exc):
                return False
            raise
        return True

    def save(self, state: SyncState, owner: str) -> None:
        values: dict[str, Any] = {":me": {"S": owner}}
        sets: list[str] = []
        removes: list[str] = []
        names: dict[str, str] = {}
        for name in _TEXT_FIELDS:
            value = getattr(state, name)
            names[f"#{name}"] = name  # status and cursor are reserved words
            if value is None:
                removes.append(f"#{name}")
            else:
                sets.append(f"#{name} = :{name}")
                values[f":{name}"] = {"S": value}
        numbers = {"parts": state.parts, "base_members": state.base_members}
        for name, number in numbers.items():
            names[f"#{name}"] = name
            if number is None:
                removes.append(f"#{name}")
            else:
                sets.append(f"#{name} = :{name}")
                values[f":{name}"] = {"N": str(number)}
        names["#counts"], names["#failures"] = "counts", "failures"
        sets.append("#counts = :counts")
        values[":counts"] = {"M": {k: {"N": str(v)} for k, v in state.counts.as_dict().items()}}
        sets.append("#failures = :failures")
        values[":failures"] = {"L": [{"S": reason} for reason in state.failures]}
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            self._ddb.update_item(TableName=self._table, Key=state_key(state.destination_id, state.audience_id),
                                  UpdateExpression=expression, ConditionExpression="lease_owner = :me",
                                  ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except ClientError as exc:
            if _conditional_failure(exc):
                raise LeaseLost(f"sync of {state.destination_id}/{state.audience_id}: lease lost") from exc
            raise

    def release(self, destination_id: str, audience_id: str, owner: str) -> None:
        try:
            self._ddb.update_item(TableName=self._table, Key=state_key(destination_id, audience_id),
                                  UpdateExpression="REMOVE lease_until, lease_owner",
                                  ConditionExpression="lease_owner = :me",
                                  ExpressionAttributeValues={":me": {"S": owner}})
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise


# --- assembly and status ----------------------------------------------------------------------


def batch_sync(dynamodb: Any, s3: Any, memberships_table: str, segments_table: str, bucket: str,
               **options: Any) -> BatchSync:
    """A ``BatchSync`` over the AWS adapters (``options``: ``BatchSync``'s keyword arguments)."""
    return BatchSync(DynamoMembers(dynamodb, memberships_table), S3Snapshots(s3, bucket),
                     DynamoSyncStates(dynamodb, segments_table), **options)


def sync_status(dynamodb: Any, segments_table: str, destination_id: str, audience_id: str,
                now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> dict[str, Any]:
    """The sync's state for the CLI and the admin API: the running sync's progress, or the
    last one's results, and whether an invocation is working on it now."""
    states = DynamoSyncStates(dynamodb, segments_table)
    item = states._item(destination_id, audience_id) or {}
    state = state_of_item({**state_key(destination_id, audience_id), **item}) if item else None
    until = item.get("lease_until", {}).get("S")
    active = until is not None and until >= iso(now())
    if state is None:
        return {"destination_id": destination_id, "audience_id": audience_id, "status": "never", "active": active}
    return {**state.as_dict(), "active": active}
