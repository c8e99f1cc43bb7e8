"""Preview of a draft audience: its estimated size and a sample of matching profiles.

Nothing is saved. A sample of the identity table is read from a random place (one
segment of a parallel scan), up to :data:`SAMPLE_PROFILES` live profiles; each is
evaluated against the draft at the current time, with the aggregate states the profile
keeps for specs already complete, and, for the draft's new event conditions, states
folded from the profile's history (the events table), as the backfill would. Nested
audiences read the profile's stored memberships.

The estimate scales the sample's share of matches to the table: live profiles ~
``ItemCount`` (DescribeTable, refreshed by DynamoDB about every six hours) times the
share of live profiles among the items scanned. It is an estimate, and says so: the
sample size and the margin (a 95 % normal interval of the share) come with it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cdp.aws.event_store import history_events
from cdp.aws.membership_store import MembershipStore
from cdp.segmentation import aggregates
from cdp.segmentation.backfill import history_partitions
from cdp.segmentation.catalog import Catalog
from cdp.segmentation.definitions import AudienceDefinition
from cdp.segmentation.evaluate import Facts, dependencies, evaluate
from cdp.segmentation.membership import accounts_of
from cdp.segmentation.tallies import facts_from_item, profile_of_item

SAMPLE_PROFILES = 200
MAX_ITEMS_READ = 5_000
SEGMENTS = 16
SAMPLE_SHOWN = 10


@dataclass(frozen=True)
class Preview:
    sampled: int  # live profiles evaluated
    matched: int
    estimated_size: int
    margin: int  # +/- (95 %)
    sample: list[str]  # matching profile ids

    def as_dict(self) -> dict[str, Any]:
        return {"sampled_profiles": self.sampled, "matching_in_sample": self.matched,
                "estimated_size": self.estimated_size, "estimate_margin": self.margin,
                "sample": self.sample,
                "method": "a random sample of stored profiles evaluated now; size = share x profile count"}


class AudiencePreview:
    def __init__(self, dynamodb: Any, identity_table: str, events_table: str, memberships: MembershipStore,
                 accounts: Callable[[list[str]], Sequence[Mapping[str, Any]]],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 choose_segment: Callable[[int], int] = lambda n: random.randrange(n)) -> None:
        self._ddb = dynamodb
        self._identity = identity_table
        self._events = events_table
        self._memberships = memberships
        self._accounts = accounts
        self._now = now
        self._segment = choose_segment

    def preview(self, draft: AudienceDefinition, catalog: Catalog) -> Preview:
        now = self._now()
        found = dependencies(draft)
        missing = {sid: spec for sid, spec in found.aggregates.items()
                   if sid not in catalog.specs or catalog.specs[sid].backfill != "done"}
        sampled = matched = scanned = 0
        sample: list[str] = []
        start = self._segment(SEGMENTS)
        for offset in range(SEGMENTS):
            request: dict[str, Any] = {"TableName": self._identity, "Segment": (start + offset) % SEGMENTS,
                                       "TotalSegments": SEGMENTS, "Limit": 500}
            while sampled < SAMPLE_PROFILES and scanned < MAX_ITEMS_READ:
                page = self._ddb.scan(**request)
                for item in page.get("Items", []):
                    scanned += 1
                    profile = profile_of_item(item)
                    if profile is None or not profile[1] or sampled >= SAMPLE_PROFILES:
                        continue
                    sampled += 1
                    if self._matches(draft, catalog, item, profile[0], missing, found.audiences, now):
                        matched += 1
                        if len(sample) < SAMPLE_SHOWN:
                            sample.append(profile[0])
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            if sampled >= SAMPLE_PROFILES or scanned >= MAX_ITEMS_READ:
                break
        total_items = int(self._ddb.describe_table(TableName=self._identity)["Table"].get("ItemCount", 0))
        profiles = max(sampled, round(total_items * sampled / scanned)) if scanned else 0
        share = matched / sampled if sampled else 0.0
        margin = 1.96 * math.sqrt(share * (1 - share) / sampled) if sampled else 0.0
        return Preview(sampled, matched, round(share * profiles), round(margin * profiles), sample)

    def _matches(self, draft: AudienceDefinition, catalog: Catalog, item: dict[str, Any], profile_id: str,
                 missing: dict[str, aggregates.AggregateSpec], audiences: set[str], now: datetime) -> bool:
        facts = facts_from_item(item, catalog, now)
        states = dict(facts.aggregates)
        if missing:
            fresh = {sid: aggregates.empty(spec) for sid, spec in missing.items()}
            for partition in history_partitions(item.get("ids", {}).get("SS", []) or [item["pk"]["S"]]):
                for event in self._history(partition):
                    fresh = {sid: aggregates.fold(state, event) for sid, state in fresh.items()}
            states.update(fresh)
        members = frozenset(self._memberships.audiences_of(profile_id)) if audiences else frozenset()
        found = dependencies(draft)
        accounts = self._accounts(sorted(accounts_of(item))) if found.account_traits or found.activity else []
        return evaluate(draft.condition, Facts(facts.traits, facts.computed, states, accounts, members), now)

    def _history(self, partition: str) -> list[dict[str, Any]]:
        return history_events(self._ddb, self._events, partition)
