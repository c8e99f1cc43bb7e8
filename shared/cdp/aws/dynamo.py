"""Small DynamoDB helpers shared by the table adapters."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

MAX_BATCH_WRITE = 25


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


def all_items(call: Callable[..., dict[str, Any]], **request: Any) -> list[dict[str, Any]]:
    """Every item of a paginated Scan or Query (``ddb.scan`` / ``ddb.query`` and its request)."""
    items: list[dict[str, Any]] = []
    while True:
        page = call(**request)
        items.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
