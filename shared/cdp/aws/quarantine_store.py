"""The quarantine table: refused events with their reason, listed by source.

Items: ``source_id``, ``sk`` = ``<received_at>#<record id>``, ``reason``, ``field``,
``index``, ``message_id``, ``raw`` (the event as sent, when under 64 KB) and
``archive_key`` (the S3 object that holds every quarantined record in full).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from cdp.aws.dynamo import batch_write

MAX_INLINE_RAW = 64 * 1024


class QuarantineStore:
    def __init__(self, dynamodb: Any, table_name: str, retention_days: int = 30,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._retention_s = retention_days * 86400
        self._sleep = sleep

    def store(self, entries: list[dict[str, Any]], archive_key: str) -> None:
        """Each entry: source_id, received_at (ISO), record_id, reason, field?, index?, message_id?, raw."""
        requests = []
        for entry in entries:
            received = datetime.fromisoformat(entry["received_at"].replace("Z", "+00:00"))
            item: dict[str, Any] = {
                "source_id": {"S": entry["source_id"]},
                "sk": {"S": f"{entry['received_at']}#{entry['record_id']}"},
                "reason": {"S": entry["reason"]},
                "received_at": {"S": entry["received_at"]},
                "archive_key": {"S": archive_key},
                "expires_at": {"N": str(int(received.timestamp()) + self._retention_s)},
            }
            for name in ("field", "message_id"):
                if entry.get(name):
                    item[name] = {"S": str(entry[name])}
            if entry.get("index") is not None:
                item["index"] = {"N": str(entry["index"])}
            raw = json.dumps(entry.get("raw"), separators=(",", ":"), ensure_ascii=False)
            if len(raw.encode("utf-8")) <= MAX_INLINE_RAW:
                item["raw"] = {"S": raw}
            requests.append({"PutRequest": {"Item": item}})
        batch_write(self._ddb, self._table, requests, self._sleep)

    def entries(self, source_id: str, limit: int = 50, newest_first: bool = True) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "source_id = :s",
            "ExpressionAttributeValues": {":s": {"S": source_id}},
            "ScanIndexForward": not newest_first,
        }
        returned = 0
        while returned < limit:
            page = self._ddb.query(**kwargs, Limit=min(100, limit - returned))
            for item in page.get("Items", []):
                returned += 1
                yield {k: (v.get("S") if "S" in v else int(v["N"])) for k, v in item.items()}
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def sources(self) -> list[str]:
        """Source ids that have quarantined events (a scan of keys only; operator use)."""
        found: set[str] = set()
        kwargs: dict[str, Any] = {"TableName": self._table, "ProjectionExpression": "source_id"}
        while True:
            page = self._ddb.scan(**kwargs)
            found.update(item["source_id"]["S"] for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(found)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
