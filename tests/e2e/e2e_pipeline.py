"""Reading what the local stack's pipeline stored: events table items and archive lines."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

from cdp import resources
from cdp.aws.event_store import event_of_item
from cdp.local import EmbeddedStack


@dataclass
class StoredEvents:
    """What the pipeline stored, by messageId: items of the events table, lines of the archive."""

    table: dict[str, list[dict[str, Any]]]
    archive: dict[str, list[dict[str, Any]]]


class Pipeline:
    """The running stack, and how to read what came out of it."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.api_url = stack.api_url
        self.write_key = stack.write_key
        session = stack.session()
        self._ddb = session.client("dynamodb")
        self._s3 = session.client("s3")

    def drain(self, timeout: float = 60.0) -> None:
        assert self.stack.wait_idle(timeout), f"pipeline not drained within {timeout} s"

    def table_events(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        kwargs: dict[str, Any] = {"TableName": resources.EVENTS_TABLE.local_name}
        while True:
            page = self._ddb.scan(**kwargs)
            for item in page["Items"]:
                if not item["pk"]["S"].startswith(("u#", "a#")):
                    continue  # profile records (merge log, account links), not history
                event = event_of_item(item)
                assert item["sk"]["S"].endswith("#" + event["messageId"])
                found.setdefault(event["messageId"], []).append(event)
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def archived_events(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        bucket = resources.ARCHIVE_BUCKET.local_name
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix="events/"):
            for obj in page.get("Contents", []):
                body = self._s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                for line in gzip.decompress(body).decode("utf-8").splitlines():
                    if line:
                        event = json.loads(line)["event"]
                        found.setdefault(event["messageId"], []).append(event)
        return found

    def stored(self) -> StoredEvents:
        return StoredEvents(table=self.table_events(), archive=self.archived_events())
