"""The delivery log table (``cdp.activation.delivery_log``): one item per destination and
UTC hour, written with ``UpdateItem ADD`` (never read-modify-write), kept 90 days."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from cdp.activation.delivery_log import COUNTERS, SYNC_PREFIX, DeliveryCounts, bucket_name, summary

RETENTION_DAYS = 90
_deserializer = TypeDeserializer()


def hour_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _expires(moment: datetime) -> dict[str, str]:
    return {"N": str(int((moment + timedelta(days=RETENTION_DAYS)).timestamp()))}


class DeliveryLog:
    def __init__(self, dynamodb: Any, table_name: str) -> None:
        self._ddb = dynamodb
        self._table = table_name

    def record(self, destination_id: str, counts: DeliveryCounts, now: datetime | None = None) -> None:
        """Add one invocation's figures to the hour's item."""
        if counts.empty:
            return
        moment = now or datetime.now(UTC)
        adds: dict[str, int] = {name: getattr(counts, name) for name in COUNTERS if getattr(counts, name)}
        adds.update({bucket_name(i): n for i, n in enumerate(counts.latencies) if n})
        names = {f"#a{i}": name for i, name in enumerate(adds)}
        values: dict[str, Any] = {f":a{i}": {"N": str(n)} for i, n in enumerate(adds.values())}
        expression = "ADD " + ", ".join(f"#a{i} :a{i}" for i in range(len(adds)))
        sets = ["expires_at = :exp"]
        values[":exp"] = _expires(moment)
        if counts.last_error:
            sets += ["last_error = :err", "last_error_at = :err_at"]
            values[":err"] = {"S": counts.last_error[:300]}
            values[":err_at"] = {"S": _stamp(moment)}
        self._ddb.update_item(
            TableName=self._table,
            Key={"destination_id": {"S": destination_id}, "hour": {"S": hour_of(moment)}},
            UpdateExpression=f"{expression} SET {', '.join(sets)}",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values)

    def record_sync(self, destination_id: str, audience_id: str, outcome: str, sync_id: str | None,
                    reason: str | None, counts: Mapping[str, int], now: datetime | None = None) -> None:
        """Add one invocation's batch sync of an audience to the hour's item: the counters,
        and the run as the audience's latest (``sync:<audience>``). Counts only, no profile."""
        moment = now or datetime.now(UTC)
        run: dict[str, Any] = {"outcome": {"S": outcome}, "at": {"S": _stamp(moment)},
                               **{k: {"N": str(int(counts.get(k, 0)))} for k in ("adds", "removes", "failed")}}
        if sync_id:
            run["sync_id"] = {"S": sync_id}
        if reason:
            run["reason"] = {"S": reason[:300]}
        self._ddb.update_item(
            TableName=self._table,
            Key={"destination_id": {"S": destination_id}, "hour": {"S": hour_of(moment)}},
            UpdateExpression="ADD sync_runs :one, sync_adds :a, sync_removes :r, sync_failed :f "
                             "SET #last = :last, expires_at = :exp",
            ExpressionAttributeNames={"#last": f"{SYNC_PREFIX}{audience_id}"},
            ExpressionAttributeValues={
                ":one": {"N": "1"}, ":a": run["adds"], ":r": run["removes"], ":f": run["failed"],
                ":last": {"M": run},
                ":exp": _expires(moment)})

    def hours(self, destination_id: str, since: datetime) -> list[dict[str, Any]]:
        """The items of the hours from ``since`` on, oldest first."""
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "destination_id = :d AND #h >= :since",
            "ExpressionAttributeNames": {"#h": "hour"},
            "ExpressionAttributeValues": {":d": {"S": destination_id}, ":since": {"S": hour_of(since)}}}
        while True:
            page = self._ddb.query(**request)
            items += [{k: _deserializer.deserialize(v) for k, v in item.items()} for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                return items
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def status(self, destination_id: str, hours: int = 24, now: datetime | None = None) -> dict[str, Any]:
        """Totals of the last ``hours`` hours (``cdp.activation.delivery_log.summary``)."""
        moment = now or datetime.now(UTC)
        return {"hours": hours, **summary(self.hours(destination_id, moment - timedelta(hours=hours - 1)))}
