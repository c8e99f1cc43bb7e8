"""Profile records in the events table: blocked merges and account links.

Keys (docs/identity.md, "Storage layout"):
- ``p#<profile_id>`` / ``blocked#<messageId>``: an event whose identifiers merge
  protection dropped, and the profiles they would have merged;
- ``p#<profile_id>`` / ``group#<groupId>``: the profile belongs to the account;
- ``g#<groupId>`` / ``member#<profile_id>``: the account's member.

Every key is derived from the event, so writing a record again (a retry, a duplicate)
writes the same item: plain ``BatchWriteItem`` puts are idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cdp.aws.dynamo import batch_write
from cdp.keys import bounded

MAX_BATCH_GET = 100


def blocked_record(profile_id: str, message_id: str, at: str, dropped: list[str],
                   profiles: list[str]) -> dict[str, Any]:
    return {"pk": {"S": f"p#{profile_id}"}, "sk": {"S": f"blocked#{bounded(message_id, 256)}"},
            "message_id": {"S": message_id}, "at": {"S": at},
            "dropped": {"L": [{"S": d} for d in dropped]}, "profiles": {"L": [{"S": p} for p in profiles]}}


def membership_records(profile_id: str, group_id: str) -> list[dict[str, Any]]:
    # No timestamp: the items must be the same whichever group call is written last.
    key = bounded(group_id)
    return [
        {"pk": {"S": f"p#{profile_id}"}, "sk": {"S": f"group#{key}"}, "group_id": {"S": group_id}},
        {"pk": {"S": f"g#{key}"}, "sk": {"S": f"member#{profile_id}"}, "profile_id": {"S": profile_id}},
    ]


class ProfileRecords:
    def __init__(self, dynamodb: Any, table_name: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._sleep = sleep

    def put(self, items: list[dict[str, Any]]) -> None:
        """Write the records not stored yet (a record's content follows from its key).

        Most ``group`` calls repeat a membership already recorded: one eventually
        consistent read of the keys (half a read unit each) saves rewriting them (one
        write unit each). A record missed by a stale read is written again: harmless.
        """
        # BatchWriteItem refuses two writes of one key; equal keys carry equal items.
        unique = {(item["pk"]["S"], item["sk"]["S"]): item for item in items}
        stored: set[tuple[str, str]] = set()
        keys = list(unique)
        for start in range(0, len(keys), MAX_BATCH_GET):
            request: dict[str, Any] = {self._table: {
                "Keys": [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in keys[start:start + MAX_BATCH_GET]],
                "ProjectionExpression": "pk, sk"}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                stored.update((i["pk"]["S"], i["sk"]["S"]) for i in response.get("Responses", {}).get(self._table, []))
                request = response.get("UnprocessedKeys") or {}
        writes = [{"PutRequest": {"Item": item}} for key, item in unique.items() if key not in stored]
        batch_write(self._ddb, self._table, writes, self._sleep)
