"""Read-only access to the identity and events tables for the Profile API.

Only ``BatchGetItem`` and ``Query`` (eventually consistent: half the read units; a
profile read a moment before a merge lands is the profile as it was): the function's
role allows nothing else on these tables. Items come back as plain Python values.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from cdp.profiles import RecordPage

MAX_BATCH_GET = 100
_deserializer = TypeDeserializer()


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


class DynamoProfileTables:
    """``cdp.profiles.ProfileTables`` over a boto3 DynamoDB client."""

    def __init__(self, dynamodb: Any, identity_table: str, events_table: str,
                 sleep: Callable[[float], None] = time.sleep, attempts: int = 6) -> None:
        self._ddb = dynamodb
        self._identity = identity_table
        self._events = events_table
        self._sleep = sleep
        self._attempts = attempts

    def _batch_get(self, table: str, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), MAX_BATCH_GET):
            request: dict[str, Any] = {table: {"Keys": keys[start:start + MAX_BATCH_GET]}}
            for attempt in range(self._attempts):
                response = self._ddb.batch_get_item(RequestItems=request)
                found.extend(response.get("Responses", {}).get(table, []))
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._sleep(random.uniform(0, 0.05 * 2**attempt))
            else:
                raise RuntimeError(f"{table}: keys still unprocessed after {self._attempts} attempts")
        return [_plain(item) for item in found]

    def get_identity(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        unique = list(dict.fromkeys(keys))
        items = self._batch_get(self._identity, [{"pk": {"S": k}} for k in unique])
        return {str(item["pk"]): item for item in items}

    def get_records(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        unique = list(dict.fromkeys(keys))
        items = self._batch_get(self._events, [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in unique])
        return {(str(item["pk"]), str(item["sk"])): item for item in items}

    def query_records(self, pk: str, *, limit: int, descending: bool = False, below: str | None = None,
                      below_inclusive: bool = False, prefix: str | None = None,
                      after: str | None = None) -> RecordPage:
        if below is not None and prefix is not None:
            raise ValueError("a key condition takes either a bound or a prefix")
        values: dict[str, Any] = {":pk": {"S": pk}}
        condition = "pk = :pk"
        if below is not None:
            condition += " AND sk <= :below" if below_inclusive else " AND sk < :below"
            values[":below"] = {"S": below}
        elif prefix is not None:
            condition += " AND begins_with(sk, :prefix)"
            values[":prefix"] = {"S": prefix}
        request: dict[str, Any] = {
            "TableName": self._events,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": not descending,
            "Limit": limit,
        }
        if after is not None:
            # A start key need not be an existing item: the query resumes after it.
            request["ExclusiveStartKey"] = {"pk": {"S": pk}, "sk": {"S": after}}
        response = self._ddb.query(**request)
        return RecordPage([_plain(i) for i in response.get("Items", [])], "LastEvaluatedKey" in response)
