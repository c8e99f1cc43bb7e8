"""The backfill job on DynamoDB: parallel scan of the history, resumable.

``DynamoBackfill.run(deadline)`` does as much as it can before ``deadline`` (a
``time.monotonic()`` instant) and returns; invoked again it continues where the last
invocation stopped, so a Lambda function on a schedule (or invoking itself) finishes a
backfill of any size. See ``cdp.segmentation.backfill`` for what is added to a profile
and why it is added once.

**What a run covers.** The specs of the catalog whose ``backfill`` is not ``done`` and
whose ``live_from`` is at least ``settle`` in the past, aggregate specs (``spec#``) and
account activity specs (``actspec#``, ``Catalog.activity_specs``) alike: an event
received just before ``live_from`` may still be in the consumer's pipeline (Kinesis,
retries) and must be in the history before its partition is read. ``settle`` must exceed the consumer's
iterator age; the default is generous.

**Scan.** ``segments`` parallel-scan segments (``Segment``/``TotalSegments``) of the
events table, worked by ``workers`` threads, each with its own client, ``page_items``
items a page. A history partition (``u#<userId>``, ``a#<anonymousId>``) is stored
together and lies in one segment, so a page holds whole partitions but its last, which
is carried into the next page. Each complete partition's events are folded, then its
holder found: its identifier item, then the profile item it points at (two
``BatchGetItem`` per page), following a merge to the survivor. A profile whose
partitions are in different pages is written once per page; its other items (links,
claims) are skipped. This reads the history once, in large pages, instead of one
``Query`` per partition: about one request per profile (the write) instead of 2.3.

**Accounts.** With activity specs in the run, a complete partition with events some
activity spec selects, received before its ``live_from``, has its holder looked up too
(in the same two ``BatchGetItem``); when the holder's state lists accounts,
``history_additions`` (the holder's live profile id, its accounts, those events) gives
the member tags to add. The page's additions are united per account and each account is
written once per page with ``DynamoIdentityGraph.apply_account_state`` (immediate mode:
a ``BatchGetItem`` and a conditional ``PutItem`` on its ``version``). A set union is
idempotent, so a resumed or repeated run writes nothing new; an account the union leaves
as it is costs no write. A run without activity specs makes no request for accounts.

**Writes.** A ``PutItem`` of the profile item as read, with ``agg`` and ``version``
new, conditional on the ``version`` read: every writer of a profile item increments
its ``version`` (the identity graph, touches, this job), so nothing else is lost. On a
conflict (the consumer wrote, a merge happened) the item is read again (consistently),
following a merge to the survivor, and the fill is recomputed from what is still
missing.

**Checkpoint.** One item ``backfill#<run id>`` in the segments table, the run id being a
hash of the specs and generations (``specs``: aggregate id -> gen, and
``actspec#<activity id>`` -> gen): per segment its scan position (a key, or ``done``)
and counts, written after each page and every ``checkpoint_seconds``; a lease
(``lease_until``, ``lease_owner``) so two invocations never work one run at once. When
every segment is done, the spec items' ``backfill`` becomes ``done`` (conditional on
their ``gen``). If a spec's ``gen`` changes during the run (deregistered and registered
again) the run stops as ``superseded``; the next invocation starts a run for the new
generation.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from cdp.aws.dynamo import all_items
from cdp.aws.event_store import event_of_item
from cdp.aws.identity_graph import DynamoIdentityGraph, home_ident_key, profile_key
from cdp.identity.config import IdentityConfig
from cdp.identity.profile_state import ProfileState, state_from_json
from cdp.observability import logger
from cdp.segmentation.account_activity import Additions, history_additions, merge_additions, selected_before_live
from cdp.segmentation.aggregates import AggregateState
from cdp.segmentation.backfill import (
    BackfillProgress,
    add_history,
    fold_history,
    partition_ident_key,
    unfilled,
)
from cdp.segmentation.catalog import ACTIVITY_PREFIX, SPEC_PREFIX, ActiveActivitySpec, ActiveSpec, CatalogStore
from cdp.segmentation.tallies import tallies_from_json, tallies_to_json

RUN_PREFIX = "backfill#"
DONE = "done"
MAX_MERGE_CHAIN = 64
MAX_BATCH_GET = 100
PAGE_ITEMS = 1000  # history items per Scan page


def spec_gens(specs: Mapping[str, ActiveSpec],
              activity: Mapping[str, ActiveActivitySpec] | None = None) -> dict[str, str]:
    """A run's specs as its checkpoint lists them: aggregate id -> gen, and
    ``actspec#<activity id>`` -> gen (so a run of aggregate specs only keeps its old id)."""
    gens = {spec_id: a.gen for spec_id, a in specs.items()}
    gens.update({ACTIVITY_PREFIX + spec_id: a.gen for spec_id, a in (activity or {}).items()})
    return gens


def run_id_of(specs: Mapping[str, ActiveSpec], activity: Mapping[str, ActiveActivitySpec] | None = None) -> str:
    """The run of a set of specs at their generations (the same set resumes the same run)."""
    canonical = json.dumps(spec_gens(specs, activity), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


@dataclass
class BackfillOutcome:
    """What one ``run`` did. ``finished``: no spec is waiting for a backfill any more."""

    finished: bool
    state: str  # idle | waiting | busy | stopped (deadline) | superseded | done
    run_id: str | None = None
    scanned: int = 0
    profiles: int = 0
    written: int = 0  # profile items written
    conflicts: int = 0
    accounts: int = 0  # account items written (activity specs)


@dataclass
class _Counters:
    scanned: int = 0
    profiles: int = 0
    written: int = 0
    conflicts: int = 0
    accounts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, scanned: int = 0, profiles: int = 0, written: int = 0, conflicts: int = 0,
            accounts: int = 0) -> None:
        with self.lock:
            self.scanned += scanned
            self.profiles += profiles
            self.written += written
            self.conflicts += conflicts
            self.accounts += accounts


class _Stop(Exception):
    """The run must stop now: the lease was lost or a spec's generation changed."""


class DynamoBackfill:
    """Fills the aggregate states of pending specs (and the account activity of pending
    activity specs) from the history; see the module docstring."""

    def __init__(self, client_factory: Callable[[], Any], identity_table: str, events_table: str,
                 segments_table: str, segments: int = 8, workers: int = 8,
                 settle: timedelta = timedelta(minutes=15), checkpoint_seconds: float = 10.0,
                 gen_check_seconds: float = 10.0, attempts: int = 8,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 page_items: int = PAGE_ITEMS) -> None:
        self._clients = client_factory
        self._identity = identity_table
        self._events = events_table
        self._segments_table = segments_table
        self._total_segments = segments
        self._workers = workers
        self._settle = settle
        self._checkpoint_seconds = checkpoint_seconds
        self._gen_check_seconds = gen_check_seconds
        self._attempts = attempts
        self._now = now
        self._clock = clock
        self._sleep = sleep
        self._page_items = page_items
        self._owner = uuid.uuid4().hex
        # Per run() call:
        self._specs: dict[str, ActiveSpec] = {}
        self._activity: dict[str, ActiveActivitySpec] = {}
        self._run_id = ""
        self._deadline = 0.0
        self._stop_reason: str | None = None
        self._counters = _Counters()
        self._next_gen_check = 0.0
        self._gen_lock = threading.Lock()

    # --- the run ------------------------------------------------------------------------

    def run(self, deadline: float) -> BackfillOutcome:
        """Work until done or ``deadline`` (``clock()`` instant); call again to continue."""
        ddb = self._clients()
        catalog = CatalogStore(ddb, self._segments_table, cache_seconds=0).current()
        pending = {sid: a for sid, a in catalog.specs.items() if a.backfill != DONE}
        pending_activity = {sid: a for sid, a in catalog.activity_specs.items() if a.backfill != DONE}
        if not pending and not pending_activity:
            return BackfillOutcome(True, "idle")
        now = self._now()
        ready = {sid: a for sid, a in pending.items() if _parse_iso(a.live_from) + self._settle <= now}
        ready_activity = {sid: a for sid, a in pending_activity.items()
                          if _parse_iso(a.live_from) + self._settle <= now}
        checkpoint = self._resumable(ddb, pending, pending_activity)
        if checkpoint is None:
            if not ready and not ready_activity:
                return BackfillOutcome(False, "waiting")
            checkpoint = self._create(ddb, ready, ready_activity)
        specs_gen = json.loads(checkpoint["specs"]["S"])
        self._specs = {sid: pending[sid] for sid in specs_gen if not sid.startswith(ACTIVITY_PREFIX)}
        self._activity = {sid.removeprefix(ACTIVITY_PREFIX): pending_activity[sid.removeprefix(ACTIVITY_PREFIX)]
                          for sid in specs_gen if sid.startswith(ACTIVITY_PREFIX)}
        self._run_id = checkpoint["pk"]["S"].removeprefix(RUN_PREFIX)
        self._deadline = deadline
        self._stop_reason = None
        self._counters = _Counters()
        self._next_gen_check = self._clock() + self._gen_check_seconds
        if not self._acquire(ddb):
            return BackfillOutcome(False, "busy", self._run_id)
        try:
            if not self._mark_specs(ddb, "running"):
                self._supersede(ddb)
                return self._outcome("superseded", finished=False)
            positions = {int(k): v["S"] for k, v in checkpoint["pos"]["M"].items()}
            todo = [s for s, p in sorted(positions.items()) if p != DONE]
            logger.info("backfill running", extra={"run_id": self._run_id, "specs": specs_gen,
                                                   "segments_left": len(todo)})
            if todo:
                with ThreadPoolExecutor(max_workers=min(self._workers, len(todo))) as pool:
                    results = list(pool.map(lambda s: self._work_segment(s, positions[s]), todo))
            else:
                results = []
            if self._stop_reason == "superseded":
                self._supersede(ddb)
                return self._outcome("superseded", finished=False)
            if not all(results):
                return self._outcome("stopped", finished=False)
            self._complete(ddb)
            remaining = (set(pending) - set(self._specs)) | (set(pending_activity) - set(self._activity))
            return self._outcome("done", finished=not remaining)
        finally:
            self._release(ddb)

    def _outcome(self, state: str, finished: bool) -> BackfillOutcome:
        c = self._counters
        return BackfillOutcome(finished, state, self._run_id, c.scanned, c.profiles, c.written, c.conflicts,
                               c.accounts)

    def _time_left(self) -> bool:
        return self._clock() < self._deadline and self._stop_reason is None

    # --- checkpoint item ------------------------------------------------------------------

    def _resumable(self, ddb: Any, pending: Mapping[str, ActiveSpec],
                   pending_activity: Mapping[str, ActiveActivitySpec]) -> dict[str, Any] | None:
        """A running checkpoint whose specs are all still pending at the same generations."""
        current = spec_gens(pending, pending_activity)
        for item in _run_items(ddb, self._segments_table):
            if item.get("status", {}).get("S") != "running":
                continue
            gens = json.loads(item["specs"]["S"])
            if all(current.get(sid) == gen for sid, gen in gens.items()):
                return item
        return None

    def _create(self, ddb: Any, specs: Mapping[str, ActiveSpec],
                activity: Mapping[str, ActiveActivitySpec]) -> dict[str, Any]:
        run_id = run_id_of(specs, activity)
        key = {"pk": {"S": RUN_PREFIX + run_id}}
        found = ddb.get_item(TableName=self._segments_table, Key=key, ConsistentRead=True).get("Item")
        if found is not None:
            return dict(found)
        estimate = ddb.describe_table(TableName=self._events)["Table"].get("ItemCount", 0)
        now = _iso(self._now())
        segments = {str(s): {"S": ""} for s in range(self._total_segments)}
        zeros = {str(s): {"N": "0"} for s in range(self._total_segments)}
        item = {**key, "specs": {"S": json.dumps(spec_gens(specs, activity), sort_keys=True)},
                "status": {"S": "running"}, "segments": {"N": str(self._total_segments)},
                "pos": {"M": segments}, "scanned": {"M": zeros}, "profiles": {"M": zeros}, "written": {"M": zeros},
                "estimate": {"N": str(int(estimate))}, "started_at": {"S": now}, "updated_at": {"S": now}}
        try:
            ddb.put_item(TableName=self._segments_table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
            return dict(ddb.get_item(TableName=self._segments_table, Key=key, ConsistentRead=True)["Item"])
        return item

    def _key(self) -> dict[str, Any]:
        return {"pk": {"S": RUN_PREFIX + self._run_id}}

    def _acquire(self, ddb: Any) -> bool:
        now = self._now()
        # Until the deadline (at most a Lambda function's 15 minutes) and a minute more.
        until = now + timedelta(seconds=min(max(self._deadline - self._clock(), 0), 900) + 60)
        try:
            ddb.update_item(TableName=self._segments_table, Key=self._key(),
                            UpdateExpression="SET lease_until = :until, lease_owner = :me",
                            ConditionExpression="attribute_exists(pk) AND "
                                                "(attribute_not_exists(lease_until) OR lease_until < :now)",
                            ExpressionAttributeValues={":until": {"S": _iso(until)}, ":me": {"S": self._owner},
                                                       ":now": {"S": _iso(now)}})
        except ClientError as exc:
            if _conditional_failure(exc):
                return False
            raise
        return True

    def _release(self, ddb: Any) -> None:
        try:
            ddb.update_item(TableName=self._segments_table, Key=self._key(), UpdateExpression="REMOVE lease_until",
                            ConditionExpression="lease_owner = :me",
                            ExpressionAttributeValues={":me": {"S": self._owner}})
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise

    def _save(self, ddb: Any, segment: int, position: str, counts: _Counters) -> None:
        """Record a segment's position and counts (only while this invocation holds the lease)."""
        s = str(segment)
        try:
            ddb.update_item(
                TableName=self._segments_table, Key=self._key(),
                # ADD takes top-level attributes only: counts are per-segment map entries.
                UpdateExpression="SET pos.#s = :p, updated_at = :t, scanned.#s = scanned.#s + :sc, "
                                 "profiles.#s = profiles.#s + :pr, written.#s = written.#s + :wr",
                ConditionExpression="lease_owner = :me",
                ExpressionAttributeNames={"#s": s},
                ExpressionAttributeValues={":p": {"S": position}, ":t": {"S": _iso(self._now())},
                                           ":sc": {"N": str(counts.scanned)}, ":pr": {"N": str(counts.profiles)},
                                           # written: profile and account items alike
                                           ":wr": {"N": str(counts.written + counts.accounts)},
                                           ":me": {"S": self._owner}})
        except ClientError as exc:
            if _conditional_failure(exc):
                self._stop_reason = "lease lost"
                raise _Stop from exc
            raise

    def _spec_items(self) -> list[tuple[str, str]]:
        """The run's spec items in the segments table (key, gen): aggregate and activity specs."""
        return [(SPEC_PREFIX + sid, a.gen) for sid, a in self._specs.items()] + \
            [(ACTIVITY_PREFIX + sid, a.gen) for sid, a in self._activity.items()]

    def _mark_specs(self, ddb: Any, status: str) -> bool:
        """Set the specs' ``backfill`` (conditional on their gen); False if a gen changed."""
        for key, gen in self._spec_items():
            try:
                ddb.update_item(TableName=self._segments_table, Key={"pk": {"S": key}},
                                UpdateExpression="SET backfill = :s", ConditionExpression="gen = :g",
                                ExpressionAttributeValues={":s": {"S": status}, ":g": {"S": gen}})
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
        return True

    def _complete(self, ddb: Any) -> None:
        ddb.update_item(TableName=self._segments_table, Key=self._key(),
                        UpdateExpression="SET #st = :done, finished_at = :t, updated_at = :t",
                        ExpressionAttributeNames={"#st": "status"},
                        ExpressionAttributeValues={":done": {"S": DONE}, ":t": {"S": _iso(self._now())}})
        if not self._mark_specs(ddb, DONE):
            logger.warning("backfill done but a spec was registered again meanwhile", extra={"run_id": self._run_id})
        logger.info("backfill done", extra={"run_id": self._run_id})

    def _supersede(self, ddb: Any) -> None:
        ddb.update_item(TableName=self._segments_table, Key=self._key(),
                        UpdateExpression="SET #st = :s, updated_at = :t", ExpressionAttributeNames={"#st": "status"},
                        ExpressionAttributeValues={":s": {"S": "superseded"}, ":t": {"S": _iso(self._now())}})
        logger.info("backfill superseded: a spec was registered again", extra={"run_id": self._run_id})

    def _check_gens(self, ddb: Any) -> None:
        """Every ``gen_check_seconds``, stop the run if a spec's generation changed."""
        with self._gen_lock:
            if self._clock() < self._next_gen_check:
                return
            self._next_gen_check = self._clock() + self._gen_check_seconds
        for key, gen in self._spec_items():
            item = ddb.get_item(TableName=self._segments_table, Key={"pk": {"S": key}},
                                ConsistentRead=True, ProjectionExpression="gen").get("Item")
            if item is None or item["gen"]["S"] != gen:
                self._stop_reason = "superseded"
                raise _Stop

    # --- one segment ----------------------------------------------------------------------

    def _work_segment(self, segment: int, position: str) -> bool:
        """Scan one segment of the history from ``position``; True when it is done.

        A page's items come partition by partition (a partition's items are stored
        together, in sort-key order, and all of one segment); every partition but the
        page's last is complete and is filled at once; the last one is carried into the
        next page. The position saved is the last item of the last partition filled, so a
        resumed scan reads the carried partition again from its first item.
        """
        ddb = self._clients()
        graph = self._account_graph(ddb) if self._activity else None
        request: dict[str, Any] = {"TableName": self._events, "Segment": segment,
                                   "TotalSegments": self._total_segments, "Limit": self._page_items}
        if position:
            request["ExclusiveStartKey"] = json.loads(position)
        pending = _Counters()
        saved_at = self._clock()
        carried: list[dict[str, Any]] = []  # the open partition's items so far
        done_through: dict[str, Any] | None = None  # key of the last item of the last partition filled
        finished: set[str] = set()  # partitions filled by this worker (a repeat would be a bug)
        try:
            while self._time_left():
                page = ddb.scan(**request)
                following = page.get("LastEvaluatedKey")
                runs = _runs(carried + page.get("Items", []))
                pending.scanned += len(page.get("Items", []))
                carried = runs.pop() if runs and following is not None else []
                complete = {run[0]["pk"]["S"]: run for run in runs}
                if finished & complete.keys():
                    raise RuntimeError(f"partition scanned twice in segment {segment}: items not contiguous")
                finished.update(complete)
                self._check_gens(ddb)
                self._fill_partitions(ddb, complete, pending, graph)
                if runs:
                    done_through = {"pk": runs[-1][-1]["pk"], "sk": runs[-1][-1]["sk"]}
                if following is None:
                    self._flush(ddb, segment, DONE, pending)
                    return True
                request["ExclusiveStartKey"] = following
                if done_through is not None and self._clock() - saved_at >= self._checkpoint_seconds:
                    self._flush(ddb, segment, json.dumps(done_through), pending)
                    saved_at = self._clock()
            if done_through is not None and self._stop_reason != "superseded":
                self._flush(ddb, segment, json.dumps(done_through), pending)
        except _Stop:
            pass
        return False

    def _flush(self, ddb: Any, segment: int, position: str, pending: _Counters) -> None:
        self._save(ddb, segment, position, pending)
        self._counters.add(pending.scanned, pending.profiles, pending.written, pending.conflicts, pending.accounts)
        pending.scanned = pending.profiles = pending.written = pending.conflicts = pending.accounts = 0

    # --- the profiles of a page's partitions ---------------------------------------------

    def _account_graph(self, ddb: Any) -> DynamoIdentityGraph:
        """A worker's identity graph, for its account writes (one per thread: it caches what it reads)."""
        return DynamoIdentityGraph(ddb, self._identity, IdentityConfig(), attempts=self._attempts, sleep=self._sleep,
                                   now=lambda: _iso(self._now()))

    def _fill_partitions(self, ddb: Any, partitions: Mapping[str, list[dict[str, Any]]], counts: _Counters,
                         graph: DynamoIdentityGraph | None = None) -> None:
        """Fold each history partition's events and add them to the live profile holding it
        (and, with a ``graph`` for activity specs, its activity to the profile's accounts)."""
        fills: dict[str, dict[str, AggregateState]] = {}
        histories: dict[str, list[dict[str, Any]]] = {}  # partition -> events an activity spec may add
        for partition, items in partitions.items():
            if partition_ident_key(partition) is None:
                continue  # not a history partition (links, claims, ...)
            events = [event_of_item(i) for i in items]
            fill = fold_history(self._specs, events, self._now())
            if fill:
                fills[partition] = fill
            if graph is not None:
                selected = [e for e in events if selected_before_live(self._activity, e)]
                if selected:
                    histories[partition] = selected
        if not fills and not histories:
            return
        holders = self._holders(ddb, list(dict.fromkeys([*fills, *histories])))
        targets: dict[str, tuple[dict[str, Any], dict[str, dict[str, AggregateState]]]] = {}
        for partition, (key, item) in holders.items():
            if partition in fills:
                targets.setdefault(key, (item, {}))[1][partition] = fills[partition]
        for key, (item, own) in targets.items():
            counts.profiles += 1
            self._fill(ddb, key, item, counts, own)
        if graph is not None and histories:
            self._add_activity(graph, {p: holders[p] for p in histories if p in holders}, histories, counts)

    def _add_activity(self, graph: DynamoIdentityGraph, holders: Mapping[str, tuple[str, dict[str, Any]]],
                      histories: Mapping[str, list[dict[str, Any]]], counts: _Counters) -> None:
        """Unite a page's history into the accounts of the profiles holding it: each account
        written once per page, and not at all when the union adds nothing."""
        additions: Additions = {}
        for partition, (key, item) in holders.items():
            accounts = state_from_json(item.get("state", {}).get("S")).accounts
            if not accounts:
                continue
            # The holder's live profile id: a home profile lives in its identifier item.
            profile_id = item["profile_id"]["S"] if "solo" in item else key.removeprefix("prof#")
            merge_additions(additions, history_additions(profile_id, accounts, self._activity, histories[partition]))
        if not additions:
            return
        specs = {spec_id: active.spec for spec_id, active in self._activity.items()}
        graph.begin_batch()  # read the accounts afresh: another page or the consumer may have written them
        for group_id in sorted(additions):
            if graph.apply_account_state(group_id, ProfileState(), additions[group_id], specs, self._now()):
                counts.accounts += 1

    def _holders(self, ddb: Any, partitions: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Partition -> (key, item) of the live profile holding its identifier (read in
        batches: the identifier items, then the ``prof#`` items they point at)."""
        idents = {partition_ident_key(p): p for p in partitions}
        found = self._batch_get(ddb, [k for k in idents if k is not None])
        holders: dict[str, tuple[str, dict[str, Any]]] = {}
        pointing: dict[str, tuple[str, list[str]]] = {}  # holder key -> (profile id, partitions)
        for ident, partition in idents.items():
            item = found.get(ident or "")
            if item is None or "profile_id" not in item:
                continue  # no profile holds it (yet): nothing to fill
            profile_id = item["profile_id"]["S"]
            if "solo" in item:
                holders[partition] = (str(ident), item)
            else:  # a profile item, or the identifier item of a home profile
                key = home_ident_key(profile_id) or profile_key(profile_id)
                pointing.setdefault(key, (profile_id, []))[1].append(partition)
        read = self._batch_get(ddb, list(pointing))
        for key, (profile_id, owned) in pointing.items():
            target = _holding(key, profile_id, read.get(key))
            if target is None and key in read:  # merged away since: follow to the survivor
                target = self._live(ddb, profile_id, consistent=False)
            for partition in owned if target is not None else ():
                holders[partition] = target  # type: ignore[assignment]
        return holders

    def _batch_get(self, ddb: Any, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), MAX_BATCH_GET):
            request: dict[str, Any] = {self._identity: {"Keys": [{"pk": {"S": k}}
                                                                 for k in keys[start:start + MAX_BATCH_GET]]}}
            for attempt in range(self._attempts):
                response = ddb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._identity, []):
                    found[item["pk"]["S"]] = dict(item)
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._sleep(random.uniform(0, 0.05 * 2**attempt))
            else:
                raise RuntimeError(f"identity items unprocessed after {self._attempts} attempts")
        return found

    def _get(self, ddb: Any, key: str, consistent: bool) -> dict[str, Any] | None:
        item = ddb.get_item(TableName=self._identity, Key={"pk": {"S": key}}, ConsistentRead=consistent).get("Item")
        return dict(item) if item is not None else None

    def _live(self, ddb: Any, profile_id: str, consistent: bool) -> tuple[str, dict[str, Any]] | None:
        """The item a (possibly merged) profile id lives in now, following merges."""
        for _ in range(MAX_MERGE_CHAIN):
            home = home_ident_key(profile_id)
            key = home or profile_key(profile_id)
            item = self._get(ddb, key, consistent)
            if item is None:
                return None
            if home is not None:
                if "solo" in item and item.get("profile_id", {}).get("S") == profile_id:
                    return key, item
                following = item.get("profile_id", {}).get("S")  # merged away: points at the survivor
                if following is None or following == profile_id:
                    return None
                profile_id = following
                continue
            if item.get("status", {}).get("S") == "live":
                return key, item
            following = item.get("merged_into", {}).get("S")
            if following is None:
                return None
            profile_id = following
        return None

    def _again(self, ddb: Any, key: str) -> tuple[str, dict[str, Any]] | None:
        """The item at ``key`` read again after a conflict, or its survivor."""
        item = self._get(ddb, key, consistent=True)
        if item is None:
            return None
        if key.startswith("prof#"):
            if item.get("status", {}).get("S") == "live":
                return key, item
            return self._live(ddb, item["merged_into"]["S"], consistent=True) if "merged_into" in item else None
        if "solo" in item:
            return key, item
        return self._live(ddb, item["profile_id"]["S"], consistent=True) if "profile_id" in item else None

    def _fill(self, ddb: Any, key: str, item: dict[str, Any], counts: _Counters,
              fills: Mapping[str, Mapping[str, AggregateState]]) -> None:
        """Add the partitions' fills to the profile item, unless already there.

        A conditional ``PutItem`` of the whole item as read, with ``agg`` and ``version``
        new: every writer of a profile item increments its ``version`` (the identity
        graph, touches, this job), so ``version = :read`` means nothing else changed
        since the read. (It costs the same write units as an ``UpdateItem``, and about
        half of moto's CPU, which bounds the local stack.)
        """
        for attempt in range(self._attempts):
            tallies = tallies_from_json(item.get("agg", {}).get("S"))
            missing = unfilled(tallies, self._specs, fills)
            updated = add_history(tallies, self._specs, {p: fills[p] for p in missing}, self._now())
            if updated is tallies:
                return
            version = item.get("version", {}).get("N")
            written = {**item, "agg": {"S": tallies_to_json(updated)},
                       "version": {"N": str(int(version or 0) + 1)}}
            try:
                ddb.put_item(
                    TableName=self._identity, Item=written,
                    ConditionExpression="version = :v" if version is not None else "attribute_not_exists(version)",
                    **({"ExpressionAttributeValues": {":v": {"N": version}}} if version is not None else {}))
            except ClientError as exc:
                if not _conditional_failure(exc):
                    raise
                counts.conflicts += 1
                again = self._again(ddb, key)
                if again is None:
                    return
                key, item = again
                if attempt:
                    self._sleep(random.uniform(0, 0.02 * 2**attempt))
                continue
            counts.written += 1
            return
        raise RuntimeError(f"profile item {key} kept changing during the backfill")


def _holding(key: str, profile_id: str, item: dict[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """(key, item) if the item read at ``key`` is profile ``profile_id``'s live item."""
    if item is None:
        return None
    if key.startswith("prof#"):
        return (key, item) if item.get("status", {}).get("S") == "live" else None
    return (key, item) if "solo" in item and item.get("profile_id", {}).get("S") == profile_id else None


def _runs(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Consecutive items grouped by partition key, in order."""
    runs: list[list[dict[str, Any]]] = []
    for item in items:
        if runs and runs[-1][0]["pk"]["S"] == item["pk"]["S"]:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


# --- status ---------------------------------------------------------------------------------


def _run_items(ddb: Any, segments_table: str) -> list[dict[str, Any]]:
    return all_items(ddb.scan, TableName=segments_table, ConsistentRead=True,
                     FilterExpression="begins_with(pk, :p)", ExpressionAttributeValues={":p": {"S": RUN_PREFIX}})


def _total(item: dict[str, Any], name: str) -> int:
    return sum(int(v["N"]) for v in item.get(name, {}).get("M", {}).values())


def progress_of_item(item: dict[str, Any]) -> BackfillProgress:
    """A checkpoint item read as progress."""
    positions = item.get("pos", {}).get("M", {})
    return BackfillProgress(
        run_id=item["pk"]["S"].removeprefix(RUN_PREFIX), specs=json.loads(item["specs"]["S"]),
        status=item.get("status", {}).get("S", "running"), segments_total=int(item["segments"]["N"]),
        segments_done=sum(1 for v in positions.values() if v["S"] == DONE),
        scanned=_total(item, "scanned"), profiles=_total(item, "profiles"), written=_total(item, "written"),
        estimate=int(item.get("estimate", {}).get("N", "0")), started_at=item["started_at"]["S"],
        updated_at=item["updated_at"]["S"], finished_at=item.get("finished_at", {}).get("S"))


def backfill_status(dynamodb: Any, segments_table: str) -> list[BackfillProgress]:
    """Every backfill run recorded in the segments table, the latest first (for the admin API and CLI)."""
    runs = [progress_of_item(i) for i in _run_items(dynamodb, segments_table)]
    return sorted(runs, key=lambda r: r.started_at, reverse=True)
