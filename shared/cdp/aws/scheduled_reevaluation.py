"""Scheduled re-evaluation: profiles whose sliding windows may have flipped a membership.

When the evaluator decides a time-based audience, it stores on the membership when the
result may next change with no new data (``next_check``: the UTC hour, in the sparse
``due`` index of the memberships table; ``cdp.segmentation.membership.next_change``).
Every hour a scheduled function (EventBridge) takes the hours that have ended since its
last run, reads the due memberships of those hours from the index (16 index partitions
per hour), and **touches** each due profile: it increments the profile item's
``version`` and sets ``checked_at``. The touch is an ordinary profile change, so the
identity table's stream hands it to the evaluator, which re-evaluates the profile's
time-based audiences at the current time with all its usual guarantees (versioned,
idempotent decisions, ``Audience Exited`` events). No profile is scanned: the cost is
proportional to the memberships due.

The last hour done is kept in the segments table (``schedule#due``), so a missed run is
caught up by the next (at most :data:`MAX_CATCH_UP_HOURS`), and a repeated run touches
nothing twice in vain: touching again only re-evaluates, which changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cdp.aws.membership_store import DUE_INDEX, DUE_SHARDS
from cdp.aws.profile_items import ProfileItems
from cdp.observability import logger

CHECKPOINT_KEY = "schedule#due"
MAX_CATCH_UP_HOURS = 7 * 24


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H")


def hours_due(last_done: str | None, now: datetime) -> list[str]:
    """The hour buckets that have ended since ``last_done`` (oldest first, bounded)."""
    end = hour_of(now)  # the current hour has not ended: its changes may still be ahead
    start = end - timedelta(hours=MAX_CATCH_UP_HOURS)
    if last_done is not None:
        done = datetime.strptime(last_done, "%Y-%m-%dT%H").replace(tzinfo=UTC)
        start = max(start, done + timedelta(hours=1))
    hours = []
    moment = start
    while moment < end:
        hours.append(hour_text(moment))
        moment += timedelta(hours=1)
    return hours


@dataclass
class ScheduleRun:
    hours: list[str] = field(default_factory=list)
    due: int = 0  # due memberships read
    touched: int = 0  # profiles touched (re-evaluated through the stream)
    gone: int = 0  # due profiles no longer live (merged away): nothing to do


class ScheduledReevaluation:
    """Reads the due memberships and touches their profiles; see the module docstring."""

    def __init__(self, dynamodb: Any, memberships_table: str, identity_table: str, segments_table: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._ddb = dynamodb
        self._memberships = memberships_table
        self._identity = identity_table
        self._segments = segments_table
        self._now = now
        self._profiles = ProfileItems(dynamodb, identity_table)

    def run(self) -> ScheduleRun:
        now = self._now()
        run = ScheduleRun(hours_due(self._last_done(), now))
        for hour in run.hours:
            profiles = set(self._due_profiles(hour, run))
            for profile_id in sorted(profiles):
                if self._touch(profile_id, now):
                    run.touched += 1
                else:
                    run.gone += 1
            self._done(hour)  # after the hour's profiles: a crash redoes the hour, harmlessly
        logger.info("scheduled re-evaluation", extra={"hours": len(run.hours), "due": run.due,
                                                      "touched": run.touched, "gone": run.gone})
        return run

    def _due_profiles(self, hour: str, run: ScheduleRun) -> Iterable[str]:
        for shard in range(DUE_SHARDS):
            request: dict[str, Any] = {"TableName": self._memberships, "IndexName": DUE_INDEX,
                                       "KeyConditionExpression": "next_check = :h",
                                       "ExpressionAttributeValues": {":h": {"S": f"{hour}#{shard:02d}"}},
                                       "ProjectionExpression": "profile_id"}
            while True:
                page = self._ddb.query(**request)
                for item in page.get("Items", []):
                    run.due += 1
                    yield item["profile_id"]["S"]
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _touch(self, profile_id: str, now: datetime) -> bool:
        """A new version of the live profile's item (its home item for a home profile)."""
        return self._profiles.touch(profile_id, {"schedule": True}, now)

    def _last_done(self) -> str | None:
        item = self._ddb.get_item(TableName=self._segments, Key={"pk": {"S": CHECKPOINT_KEY}},
                                  ConsistentRead=True).get("Item")
        return item["hour"]["S"] if item else None

    def _done(self, hour: str) -> None:
        self._ddb.put_item(TableName=self._segments, Item={
            "pk": {"S": CHECKPOINT_KEY}, "hour": {"S": hour},
            "updated_at": {"S": self._now().isoformat(timespec="seconds")}})
