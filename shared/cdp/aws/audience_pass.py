"""An audience's first evaluation over every existing profile (new or edited definitions).

The stream evaluator only sees profiles that change. A new audience (or an edited one:
``DefinitionStore.put`` rewrites the item, so its ``evaluated_version`` goes) must also be
evaluated for every profile already stored. Once the backfill of every aggregate spec and
account activity spec the audience reads is done (its states are complete), this pass
scans the identity table and **touches** each live profile with ``check`` =
``{"audiences": [...]}`` (``cdp.aws.profile_items``): the stream then brings every
profile to the evaluator, which evaluates the named audiences with its usual versioned,
idempotent decisions. When the scan ends, each audience item gets ``evaluated_version``
= its ``version`` (conditional on the version, so an edit during the pass leaves it
pending for the next one): it is then ``ready``.

The scan position is kept in the segments table (``audience-pass#<run id>``, the run id
a hash of the pending audiences and versions), so an invocation that runs out of time
continues where it stopped; touching a profile twice only evaluates it twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from cdp.aws.dynamo import all_items
from cdp.aws.profile_items import ProfileItems
from cdp.segmentation.catalog import SPEC_PREFIX, catalog_from_items
from cdp.segmentation.evaluate import dependencies
from cdp.segmentation.tallies import profile_of_item

PASS_PREFIX = "audience-pass#"


@dataclass(frozen=True)
class PassOutcome:
    finished: bool  # nothing pending any more
    state: str  # idle | waiting (a spec's backfill is not done) | running | done
    audiences: tuple[str, ...] = ()
    touched: int = 0


class AudiencePass:
    def __init__(self, dynamodb: Any, identity_table: str, segments_table: str, page_size: int = 100,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ddb = dynamodb
        self._identity = identity_table
        self._segments = segments_table
        self._page_size = page_size
        self._now = now
        self._clock = clock
        self._profiles = ProfileItems(dynamodb, identity_table)

    def pending(self) -> tuple[dict[str, int], bool]:
        """Audiences to evaluate (id -> version), and whether all their specs are backfilled."""
        items = all_items(self._ddb.scan, TableName=self._segments, ConsistentRead=True)
        catalog = catalog_from_items(items)
        specs = {i["pk"]["S"].removeprefix(SPEC_PREFIX): i.get("backfill", {}).get("S", "pending")
                 for i in items if i["pk"]["S"].startswith(SPEC_PREFIX)}
        pending: dict[str, int] = {}
        ready = True
        for item in items:
            kind, _, ident = item["pk"]["S"].partition("#")
            if kind != "audience" or ident not in catalog.audiences:
                continue
            version = int(item.get("version", {}).get("N", "0"))
            if int(item.get("evaluated_version", {}).get("N", "-1")) == version:
                continue
            pending[ident] = version
            needed = set(dependencies(catalog.audiences[ident]).aggregates)
            for trait_id in dependencies(catalog.audiences[ident]).computed_traits:
                spec_id = catalog.computed_spec_id(trait_id)
                if spec_id:
                    needed.add(spec_id)
            if any(specs.get(spec_id) != "done" for spec_id in needed):
                ready = False
            activity = catalog.activity_specs  # account activity specs: their history is backfilled too
            if any(spec_id not in activity or activity[spec_id].backfill != "done"
                   for spec_id in dependencies(catalog.audiences[ident]).activity):
                ready = False
        return pending, ready

    def run(self, deadline: float) -> PassOutcome:
        """Touch live profiles for the pending audiences until done or ``deadline`` (monotonic)."""
        pending, ready = self.pending()
        if not pending:
            return PassOutcome(True, "idle")
        ids = tuple(sorted(pending))
        if not ready:
            return PassOutcome(False, "waiting", ids)
        run_id = hashlib.sha256(json.dumps(pending, sort_keys=True).encode()).hexdigest()[:16]
        position = self._position(run_id)
        touched = 0
        while position != "done":
            request: dict[str, Any] = {"TableName": self._identity, "Limit": self._page_size,
                                       "ProjectionExpression": "pk, #s, solo, profile_id",
                                       "ExpressionAttributeNames": {"#s": "status"}}
            if position:
                request["ExclusiveStartKey"] = {"pk": {"S": position}}
            page = self._ddb.scan(**request)
            for item in page.get("Items", []):
                if self._clock() >= deadline:
                    if position:
                        self._save(run_id, position)  # resume after the last item done
                    return PassOutcome(False, "running", ids, touched)
                found = profile_of_item(item)
                if found is not None and found[1] and self._profiles.touch(found[0], {"audiences": list(ids)},
                                                                         self._now()):
                    touched += 1
                position = item["pk"]["S"]
            last = page.get("LastEvaluatedKey")
            position = last["pk"]["S"] if last else "done"
            self._save(run_id, position)
        for audience_id, version in pending.items():
            self._mark_evaluated(audience_id, version)
        return PassOutcome(True, "done", ids, touched)

    def _position(self, run_id: str) -> str | None:
        item = self._ddb.get_item(TableName=self._segments, Key={"pk": {"S": PASS_PREFIX + run_id}},
                                  ConsistentRead=True).get("Item")
        return item["position"]["S"] if item else None

    def _save(self, run_id: str, position: str) -> None:
        self._ddb.put_item(TableName=self._segments, Item={
            "pk": {"S": PASS_PREFIX + run_id}, "position": {"S": position},
            "updated_at": {"S": self._now().isoformat(timespec="seconds")}})

    def _mark_evaluated(self, audience_id: str, version: int) -> None:
        try:
            self._ddb.update_item(TableName=self._segments, Key={"pk": {"S": f"audience#{audience_id}"}},
                                  UpdateExpression="SET evaluated_version = :v",
                                  ConditionExpression="version = :v",
                                  ExpressionAttributeValues={":v": {"N": str(version)}})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise  # else: edited during the pass; the next pass evaluates the new version
