"""Profile items by profile id (following merges), and **touching** a profile.

A profile id names a ``prof#`` item or, for a home profile (``a.`` ids), its anonymous
id's identifier item; a merged profile resolves to its survivor.

Touching gives a live profile item a new ``version`` (and ``check``: why, JSON) without
changing what it knows. The identity table's stream hands the touched item to the
segment evaluator, which re-evaluates what ``check`` names (``cdp.segmentation.membership
.decide``): the hourly schedule (due time-based audiences), an account whose traits
changed (its members' account audiences). Going through the stream keeps every
evaluation versioned, idempotent and in order with the profile's own changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdp.aws.identity_graph import MAX_MERGE_CHAIN, home_ident_key, profile_key
from cdp.segmentation.tallies import profile_of_item

MAX_BATCH_GET = 100


class ProfileItems:
    def __init__(self, dynamodb: Any, identity_table: str) -> None:
        self._ddb = dynamodb
        self._table = identity_table

    def _get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), MAX_BATCH_GET):
            request: dict[str, Any] = {self._table: {"Keys": [{"pk": {"S": k}} for k in unique[start:start + 100]]}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    found[item["pk"]["S"]] = item
                request = response.get("UnprocessedKeys") or {}
        return found

    def touch(self, profile_id: str, check: Mapping[str, Any], now: datetime | None = None) -> bool:
        """A new version of the live profile's item; False if it is not live (merged away)."""
        moment = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
        home = home_ident_key(profile_id)
        values: dict[str, Any] = {":one": {"N": "1"},
                                  ":check": {"S": json.dumps({**check, "at": moment}, sort_keys=True)}}
        names: dict[str, str] = {}
        if home:
            key, live = home, "attribute_exists(solo) AND profile_id = :p"
            values[":p"] = {"S": profile_id}
        else:
            key, live = profile_key(profile_id), "#status = :live"
            values[":live"] = {"S": "live"}
            names["#status"] = "status"
        try:
            self._ddb.update_item(
                TableName=self._table, Key={"pk": {"S": key}},
                UpdateExpression="SET version = version + :one, #check = :check",
                ConditionExpression=f"attribute_exists(version) AND {live}",
                ExpressionAttributeValues=values, ExpressionAttributeNames={**names, "#check": "check"})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def live_items(self, profile_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The live profile item of each id's (surviving) profile, by live profile id."""
        pending = set(profile_ids)
        live: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for _ in range(MAX_MERGE_CHAIN):
            if not pending:
                break
            seen |= pending
            keys = {pid: home_ident_key(pid) or profile_key(pid) for pid in pending}
            items = self._get(list(keys.values()))
            following: set[str] = set()
            for pid, key in keys.items():
                item = items.get(key)
                if item is None:
                    continue
                found = profile_of_item(item)
                if found is not None and found == (pid, True):
                    live[pid] = item
                elif "merged_into" in item:
                    following.add(item["merged_into"]["S"])
                elif key.startswith("ident#") and "profile_id" in item:
                    following.add(item["profile_id"]["S"])  # a home profile merged away
            pending = following - seen - set(live)
        return live
