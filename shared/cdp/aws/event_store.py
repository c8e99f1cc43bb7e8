"""The events table: every accepted event, per person, newest last.

Key: ``pk`` = ``u#<userId>`` or ``a#<anonymousId>``; ``sk`` = ``<timestamp>#<messageId>``
(ids longer than DynamoDB's key limits allow are replaced by their SHA-256, see cdp.keys).
Writing the same event again writes the same item (idempotent). The unification
stage (next issue) re-keys history by profile; this key is its input.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cdp.aws.dynamo import batch_write
from cdp.keys import bounded


def person_key(event: dict[str, Any]) -> str:
    if event.get("userId"):
        return f"u#{bounded(event['userId'])}"
    return f"a#{bounded(event['anonymousId'])}"


def event_item(source_id: str, event: dict[str, Any], expires_at: int) -> dict[str, Any]:
    # Only keys, source and payload: everything else is inside the payload, and most
    # events then fit in one write unit (1 KB).
    item: dict[str, Any] = {
        "pk": {"S": person_key(event)},
        "sk": {"S": f"{event['timestamp']}#{bounded(event['messageId'], 256)}"},
        "source_id": {"S": source_id},
        "payload": {"S": json.dumps(event, separators=(",", ":"), ensure_ascii=False)},
        "expires_at": {"N": str(expires_at)},
    }
    return item


class DynamoEventStore:
    def __init__(self, dynamodb: Any, table_name: str, retention_days: int = 90,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._retention_s = retention_days * 86400
        self._sleep = sleep

    def store(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Store (source_id, normalised event) pairs."""
        requests = []
        seen: set[tuple[str, str]] = set()
        for source_id, event in events:
            received = datetime.fromisoformat(event["receivedAt"].replace("Z", "+00:00"))
            item = event_item(source_id, event, int(received.timestamp()) + self._retention_s)
            key = (item["pk"]["S"], item["sk"]["S"])
            if key in seen:  # BatchWriteItem refuses two writes of one key
                continue
            seen.add(key)
            requests.append({"PutRequest": {"Item": item}})
        batch_write(self._ddb, self._table, requests, self._sleep)
