"""The dedupe table: claims on messageIds so each event is processed once.

A claim is a conditional write in one TransactWriteItems call per <= 100 events:
IN_PROGRESS with an owner (the Kinesis record's shard:sequence) and a lease. The
same record retried may re-claim; another record with the same messageId may take
over only after the lease expires (its owner died) or the owner released the claim
after a failure (so a redriven copy from the DLQ is not refused as busy). After the event's effects are
stored, the claims become COMPLETED (BatchWriteItem) and stay for the TTL (>= 24 h):
a later copy of the event is then recognised as a duplicate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
MAX_TRANSACTION_ITEMS = 100
MAX_BATCH_WRITE = 25
MAX_BATCH_GET = 100


@dataclass
class ClaimResult:
    claimed: set[str] = field(default_factory=set)
    duplicates: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # claimed by a live owner: retry later


class DedupeStore:
    def __init__(self, dynamodb: Any, table_name: str, ttl_hours: int = 48, lease_s: int = 180,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 conflict_attempts: int = 4) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._ttl_s = ttl_hours * 3600
        self._lease_s = lease_s
        self._clock = clock
        self._sleep = sleep
        self._conflict_attempts = conflict_attempts

    def claim(self, owners: dict[str, str]) -> ClaimResult:
        """Claim each key (messageId scoped by source) for its owner."""
        result = ClaimResult()
        keys = list(owners)
        for start in range(0, len(keys), MAX_TRANSACTION_ITEMS):
            self._claim_chunk({k: owners[k] for k in keys[start:start + MAX_TRANSACTION_ITEMS]}, result)
        return result

    def _claim_chunk(self, owners: dict[str, str], result: ClaimResult) -> None:
        pending = dict(owners)
        for attempt in range(self._conflict_attempts):
            if not pending:
                return
            now = int(self._clock())
            items = list(pending)
            try:
                self._ddb.transact_write_items(TransactItems=[
                    {"Put": {
                        "TableName": self._table,
                        "Item": {"pk": {"S": key}, "status": {"S": IN_PROGRESS},
                                 "owner": {"S": pending[key]},
                                 "lease_until": {"N": str(now + self._lease_s)},
                                 "expires_at": {"N": str(now + self._ttl_s)}},
                        "ConditionExpression": "attribute_not_exists(pk) OR (#s = :p AND "
                                               "(#o = :me OR lease_until < :now))",
                        "ExpressionAttributeNames": {"#s": "status", "#o": "owner"},
                        "ExpressionAttributeValues": {":p": {"S": IN_PROGRESS},
                                                      ":me": {"S": pending[key]},
                                                      ":now": {"N": str(now)}},
                    }} for key in items
                ])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                reasons = exc.response.get("CancellationReasons") or []
                refused = [key for key, reason in zip(items, reasons, strict=False)
                           if reason.get("Code") == "ConditionalCheckFailed"]
                if refused:
                    done = self._completed(refused)
                    for key in refused:
                        (result.duplicates if key in done else result.busy).add(key)
                        pending.pop(key)
                else:  # conflicts with a concurrent transaction: back off and retry
                    self._sleep(random.uniform(0, 0.05 * 2**attempt))
                continue
            result.claimed.update(pending)
            return
        result.busy.update(pending)

    def _completed(self, keys: list[str]) -> set[str]:
        done: set[str] = set()
        for start in range(0, len(keys), MAX_BATCH_GET):
            request = {self._table: {"Keys": [{"pk": {"S": k}} for k in keys[start:start + MAX_BATCH_GET]],
                                     "ConsistentRead": True,
                                     "ProjectionExpression": "pk, #s",
                                     "ExpressionAttributeNames": {"#s": "status"}}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    if item.get("status", {}).get("S") == COMPLETED:
                        done.add(item["pk"]["S"])
                request = response.get("UnprocessedKeys") or {}
        return done

    def release(self, owners: dict[str, str]) -> None:
        """Give up claims after a failure, so a redriven copy need not wait for the lease.

        Conditional on still owning an IN_PROGRESS claim; best effort (a crash here
        leaves the lease to expire). Only runs on the failure path.
        """
        for key, owner in owners.items():
            try:
                self._ddb.delete_item(
                    TableName=self._table, Key={"pk": {"S": key}},
                    ConditionExpression="#s = :p AND #o = :me",
                    ExpressionAttributeNames={"#s": "status", "#o": "owner"},
                    ExpressionAttributeValues={":p": {"S": IN_PROGRESS}, ":me": {"S": owner}},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise

    def complete(self, keys: list[str]) -> None:
        """Mark claims COMPLETED; unconditional (only the claim's owner gets here)."""
        expires = str(int(self._clock()) + self._ttl_s)
        puts = [{"PutRequest": {"Item": {"pk": {"S": k}, "status": {"S": COMPLETED},
                                         "expires_at": {"N": expires}}}} for k in keys]
        batch_write(self._ddb, self._table, puts, self._sleep)


def batch_write(ddb: Any, table: str, requests: list[dict[str, Any]],
                sleep: Callable[[float], None] = time.sleep, attempts: int = 6) -> None:
    """BatchWriteItem in chunks of 25, retrying unprocessed items with backoff."""
    for start in range(0, len(requests), MAX_BATCH_WRITE):
        pending = requests[start:start + MAX_BATCH_WRITE]
        for attempt in range(attempts):
            response = ddb.batch_write_item(RequestItems={table: pending})
            pending = (response.get("UnprocessedItems") or {}).get(table, [])
            if not pending:
                break
            sleep(random.uniform(0, 0.05 * 2**attempt))
        else:
            raise RuntimeError(f"{len(pending)} items of {table} unprocessed after {attempts} attempts")
