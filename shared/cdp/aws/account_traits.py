"""The traits of accounts, for audiences with account conditions, and an account's members.

A profile's accounts are in its state (``ProfileState.accounts``, kept by the unification
stage and united by merges); each account's traits are the ``state`` of its
``acct#<groupId>`` item in the identity table, and its members' activity its ``act``
(``cdp.segmentation.account_activity``): one BatchGetItem per 100 accounts. An
account's members are ``g#<groupId>`` / ``member#<profile_id>`` records in the events
table (``cdp.aws.profile_store``), profile ids as they were when they joined.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cdp.aws.identity_graph import account_key
from cdp.identity.profile_state import state_from_json
from cdp.segmentation.account_activity import activity_from_json, buckets_of
from cdp.segmentation.evaluate import AccountFacts

MAX_BATCH_GET = 100


class AccountTraits:
    def __init__(self, dynamodb: Any, events_table: str, identity_table: str) -> None:
        self._ddb = dynamodb
        self._events = events_table
        self._identity = identity_table

    def group_ids(self, profile_id: str) -> list[str]:
        ids: list[str] = []
        request: dict[str, Any] = {"TableName": self._events,
                                   "KeyConditionExpression": "pk = :p AND begins_with(sk, :g)",
                                   "ExpressionAttributeValues": {":p": {"S": f"p#{profile_id}"},
                                                                 ":g": {"S": "group#"}},
                                   "ProjectionExpression": "group_id"}
        while True:
            page = self._ddb.query(**request)
            ids.extend(item["group_id"]["S"] for item in page.get("Items", []) if "group_id" in item)
            if "LastEvaluatedKey" not in page:
                return sorted(set(ids))
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def member_ids(self, group_id: str) -> list[str]:
        """The profile ids recorded as the account's members (some may have been merged since)."""
        ids: list[str] = []
        request: dict[str, Any] = {"TableName": self._events,
                                   "KeyConditionExpression": "pk = :g AND begins_with(sk, :m)",
                                   "ExpressionAttributeValues": {":g": {"S": f"g#{group_id}"},
                                                                 ":m": {"S": "member#"}},
                                   "ProjectionExpression": "sk"}
        while True:
            page = self._ddb.query(**request)
            ids.extend(item["sk"]["S"].removeprefix("member#") for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(set(ids))
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def of_profile(self, profile_id: str) -> list[AccountFacts]:
        """Each account's traits, for the accounts the profile's own link records name."""
        return self.of_groups(self.group_ids(profile_id))

    def of_groups(self, group_ids: Iterable[str]) -> list[AccountFacts]:
        """Each account's traits (a mapping name -> value) and activity, for these accounts
        (unknown ones left out)."""
        keys = [account_key(group_id) for group_id in sorted(set(group_ids))]
        found: list[AccountFacts] = []
        for start in range(0, len(keys), MAX_BATCH_GET):
            request: dict[str, Any] = {self._identity: {
                "Keys": [{"pk": {"S": key}} for key in keys[start:start + MAX_BATCH_GET]],
                "ProjectionExpression": "pk, group_id, #s, act", "ExpressionAttributeNames": {"#s": "state"}}}
            while request:
                response = self._ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._identity, []):
                    state = state_from_json(item.get("state", {}).get("S"))
                    group_id = item.get("group_id", {}).get("S") or item["pk"]["S"].removeprefix("acct#")
                    found.append(AccountFacts(group_id, {name: trait.value for name, trait in state.traits.items()},
                                              buckets_of(activity_from_json(item.get("act", {}).get("S")))))
                request = response.get("UnprocessedKeys") or {}
        return found
