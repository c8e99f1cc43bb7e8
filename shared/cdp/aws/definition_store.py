"""Audience and computed trait definitions (issue 4) in the segments table.

Item: ``pk`` = ``audience#<id>`` or ``computed_trait#<id>``; ``definition`` (the JSON as
validated by ``cdp.segmentation.definitions``), ``version`` (N, +1 per change),
``created_at``, ``updated_at``. Creating is conditional on absence and updating on the
version the caller read, so two admins editing one definition cannot overwrite each
other silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError

Kind = Literal["audience", "computed_trait"]


@dataclass(frozen=True)
class StoredDefinition:
    kind: Kind
    id: str
    definition: str  # JSON
    version: int
    created_at: str
    updated_at: str
    # Audiences: the version every existing profile was evaluated against (cdp.aws.audience_pass).
    evaluated_version: int | None = None


class DefinitionConflict(Exception):
    """The definition exists already (create) or changed since it was read (update)."""


def _stored(item: dict[str, Any]) -> StoredDefinition:
    kind, _, ident = item["pk"]["S"].partition("#")
    return StoredDefinition(kind=kind, id=ident, definition=item["definition"]["S"],  # type: ignore[arg-type]
                            version=int(item["version"]["N"]), created_at=item["created_at"]["S"],
                            updated_at=item["updated_at"]["S"],
                            evaluated_version=int(item["evaluated_version"]["N"]) if "evaluated_version" in item
                            else None)


class DefinitionStore:
    def __init__(self, dynamodb: Any, table_name: str,
                 now: Callable[[], str] = lambda: datetime.now(UTC).isoformat(timespec="seconds")) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._now = now

    def get(self, kind: Kind, ident: str) -> StoredDefinition | None:
        item = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": f"{kind}#{ident}"}},
                                  ConsistentRead=True).get("Item")
        return _stored(item) if item else None

    def list(self, kind: Kind) -> list[StoredDefinition]:
        """Every definition of a kind, by id (a scan: the table holds definitions only)."""
        found: list[StoredDefinition] = []
        request: dict[str, Any] = {"TableName": self._table, "FilterExpression": "begins_with(pk, :kind)",
                                   "ExpressionAttributeValues": {":kind": {"S": f"{kind}#"}}}
        while True:
            page = self._ddb.scan(**request)
            found.extend(_stored(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(found, key=lambda d: d.id)
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def put(self, kind: Kind, ident: str, definition: str, expected_version: int | None) -> StoredDefinition:
        """Create (``expected_version`` None) or replace the version the caller read."""
        now = self._now()
        current = None if expected_version is None else self.get(kind, ident)
        created = current.created_at if current else now
        version = (expected_version or 0) + 1
        item = {"pk": {"S": f"{kind}#{ident}"}, "definition": {"S": definition}, "version": {"N": str(version)},
                "created_at": {"S": created}, "updated_at": {"S": now}}
        condition: dict[str, Any] = (
            {"ConditionExpression": "attribute_not_exists(pk)"} if expected_version is None else
            {"ConditionExpression": "version = :v", "ExpressionAttributeValues": {":v": {"N": str(expected_version)}}})
        try:
            self._ddb.put_item(TableName=self._table, Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise DefinitionConflict(f"{kind} {ident} exists or changed") from exc
            raise
        return _stored(item)

    def delete(self, kind: Kind, ident: str) -> bool:
        response = self._ddb.delete_item(TableName=self._table, Key={"pk": {"S": f"{kind}#{ident}"}},
                                         ReturnValues="ALL_OLD")
        return "Attributes" in response
