"""The dedupe table: one claim per messageId, so each event is processed once.

A claim is a conditional put of ``{pk, owner, expires_at}``, where the owner is the
Kinesis record (``shard:sequence``) that carries the event. It succeeds if nobody
claimed the messageId, or if the claim is this record's own (Lambda retrying the
record, after a crash or a partial batch failure), or if the record is a redrive of the
claim's owner from the dead-letter queue. Any other copy of the event within the TTL
(>= 24 h) is a duplicate.

Why this is enough: the owner either stores the event or keeps being retried (same
owner) until it succeeds or lands in the DLQ, whose redrive carries the owner along;
after a failure it also releases its claims (best effort), so a copy sent again later
by the client is not refused. No IN_PROGRESS state, no second write per event.

Claims go in one TransactWriteItems per 100 events (2 write units each) rather than one
PutItem each (1 write unit): a boto3 call costs about 1 ms of CPU, and per-event calls
made the consumer miss its CPU budget (docs/benchmarks.md). A cancelled transaction
names the items whose condition failed (duplicates); the others are claimed again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

MAX_TRANSACTION_ITEMS = 100


@dataclass
class ClaimResult:
    claimed: set[str] = field(default_factory=set)
    duplicates: set[str] = field(default_factory=set)


class DedupeStore:
    def __init__(self, dynamodb: Any, table_name: str, ttl_hours: int = 48,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 conflict_attempts: int = 6) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._ttl_s = ttl_hours * 3600
        self._clock = clock
        self._sleep = sleep
        self._attempts = conflict_attempts

    def claim(self, owners: dict[str, str], redrive_of: dict[str, str] | None = None) -> ClaimResult:
        """Claim each key (``source#messageId``) for its owner; see the module docstring."""
        result = ClaimResult()
        keys = list(owners)
        for start in range(0, len(keys), MAX_TRANSACTION_ITEMS):
            self._claim_chunk(keys[start:start + MAX_TRANSACTION_ITEMS], owners, redrive_of or {}, result)
        return result

    def _put(self, key: str, owner: str, previous_owner: str | None, expires: str) -> dict[str, Any]:
        condition = "attribute_not_exists(pk) OR #o = :me"
        values = {":me": {"S": owner}}
        if previous_owner:
            condition += " OR #o = :previous"
            values[":previous"] = {"S": previous_owner}
        return {"Put": {
            "TableName": self._table,
            "Item": {"pk": {"S": key}, "owner": {"S": owner}, "expires_at": {"N": expires}},
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#o": "owner"},
            "ExpressionAttributeValues": values,
        }}

    def _claim_chunk(self, keys: list[str], owners: dict[str, str], previous: dict[str, str],
                     result: ClaimResult) -> None:
        pending = list(keys)
        for attempt in range(self._attempts):
            if not pending:
                return
            expires = str(int(self._clock()) + self._ttl_s)
            try:
                self._ddb.transact_write_items(TransactItems=[
                    self._put(k, owners[k], previous.get(k), expires) for k in pending])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                reasons = exc.response.get("CancellationReasons") or []
                refused = {k for k, r in zip(pending, reasons, strict=False)
                           if r.get("Code") == "ConditionalCheckFailed"}
                result.duplicates |= refused
                pending = [k for k in pending if k not in refused]
                if not refused:  # a conflict with a concurrent transaction: back off
                    self._sleep(random.uniform(0, 0.05 * 2**attempt))
                continue
            result.claimed.update(pending)
            return
        raise RuntimeError(f"dedupe claims still conflicting after {self._attempts} attempts")

    def release(self, owners: dict[str, str]) -> None:
        """Give up claims after a failure (conditional on still owning them; best effort)."""
        for key, owner in owners.items():
            try:
                self._ddb.delete_item(
                    TableName=self._table, Key={"pk": {"S": key}},
                    ConditionExpression="#o = :me",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":me": {"S": owner}},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
