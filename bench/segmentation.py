"""Benchmark of the segment evaluator (issue 4) and of the scheduled re-evaluation.

    .venv/bin/python -m bench.segmentation                          # 10, 100, 1,000 audiences
    .venv/bin/python -m bench.segmentation --audiences 100 --profile  # where the CPU goes
    .venv/bin/python -m bench.segmentation --audiences 10 --profiles 200 --runs 1  # smoke

moto runs as a separate server process (bench/moto_process.py), so only our code and
boto3's client-side work are inside ``time.process_time()``, taken around each call of
the real handler (``functions/segment_evaluator/handler.py``) and nothing else. AWS
requests are counted by botocore hooks (bench/aws_meter.py), DynamoDB request units
computed by DynamoDB's rules from item sizes (never moto's ConsumedCapacity).

Per catalog size N: a generated catalog of N audiences (traits, sliding-window and
all-time event conditions, computed traits, nested and/or/not, audience references),
of which exactly K read the inputs the measured change touches (trait ``plan`` and the
``page "Pricing"`` counters); ``--windowed-share`` of the others read a sliding window
(directly, through a windowed computed trait or a nested audience), which makes them
time-based. P profiles (identity-table ``prof#`` items, traits and ``agg`` folded from a
60-day history) are written to the identity table, then delivered to the handler as
stream records (``cdp.local.lambda_events.dynamodb_stream_event``, NEW_AND_OLD_IMAGES)
in batches of ``SEGMENT_EVALUATOR_ESM.batch_size``:

1. ``new``: each profile as a brand-new item (no old image: every audience evaluated);
2. ``change`` (``--runs`` rounds): a new Pricing page view folded into ``agg``, and on
   every other profile a new ``plan``; CPU is the median of the rounds;
3. ``nothing``: a change of a trait no audience reads;
4. the scheduled re-evaluation (``cdp.aws.scheduled_reevaluation``) of the first UTC
   midnight after the changes, then the evaluator on the profiles it touched (their
   stream records, built as DynamoDB Streams would deliver the touch).

Before each handler call everything the benchmark holds is frozen out of the garbage
collector (``gc.freeze()``): the meter's shadow of every item written grows with the run,
and collections inside the handler would otherwise scan it (no real function holds it).

The evaluator's clock is fixed (``NOW``; the midnight run one hour later), so runs are
repeatable. The catalog is read once per warm function (cache set to a day) and that
first load is reported apart: in AWS it recurs once per ``CDP_SEGMENTS_CACHE_SECONDS``
(60 s) per warm instance.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.aws_meter import AwsMeter, item_size
from bench.cost_model import GB, MILLION, PRICES, cpu_share, gb_seconds
from bench.moto_process import MotoServerProcess
from cdp import resources

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # the evaluator's clock during the changes
MIDNIGHT = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
SCHEDULE_RUN_AT = MIDNIGHT + timedelta(hours=1, minutes=5)  # the run that takes hour 00
REGISTERED = NOW - timedelta(days=120)  # specs live before every generated event
HISTORY_DAYS = 60
ASSUMED_AWS_CALL_LATENCY_MS = 10.0
ASSUMED_PLATFORM_LOG_BYTES = 330
TARGET_CPU_MS = 2.0  # per profile change, 100 audiences of which 5 affected
PHASES = ("new", "change", "nothing", "schedule", "scheduled-eval")

# --- the catalog (pure) -----------------------------------------------------------------

AFFECTED_TRAIT = "plan"
PRICING = "Pricing"
PLANS = ("free", "trial", "pro", "enterprise")
TRAIT_VALUES: dict[str, tuple[Any, ...]] = {
    "country": ("US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"),
    "industry": ("saas", "retail", "finance", "health", "media", "education"),
    "role": ("engineer", "manager", "founder", "marketer", "analyst", "designer"),
    "lifecycle_stage": ("lead", "mql", "sql", "customer", "churned"),
    "signup_source": ("organic", "ads", "referral", "partner", "event"),
    "language": ("en", "de", "fr", "es", "pt", "ja"),
    "newsletter": (True, False),
}
NUMERIC_TRAITS = {"company_size": (1, 5000), "seats": (1, 200), "nps": (0, 10)}
TRACK_EVENTS = ("Signed In", "Feature Used", "Order Completed", "Product Viewed", "Product Added",
                "Checkout Started", "Video Played", "Search Performed", "Invite Sent", "Report Exported",
                "File Uploaded", "Comment Posted")
PAGES = ("Docs", "Blog", "Home", "Integrations", "Changelog", "Careers")
WINDOWS = (7, 14, 30, 90)
# Computed traits: (id, aggregate, windowed)
COMPUTED: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("lifetime_value", {"kind": "sum", "event": "Order Completed", "property": "total"}, False),
    ("orders_total", {"kind": "count", "event": "Order Completed"}, False),
    ("avg_order_value", {"kind": "average", "event": "Order Completed", "property": "total"}, False),
    ("orders_30d", {"kind": "count", "event": "Order Completed", "window": {"days": 30}}, True),
    ("videos_14d", {"kind": "count", "event": "Video Played", "window": {"days": 14}}, True),
)


def _trait_condition(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.25:
        trait = rng.choice(sorted(NUMERIC_TRAITS))
        low, high = NUMERIC_TRAITS[trait]
        return {"type": "trait", "trait": trait, "op": rng.choice(("gte", "lt")), "value": rng.randint(low, high)}
    trait = rng.choice(sorted(TRAIT_VALUES))
    values = TRAIT_VALUES[trait]
    kind = rng.random()
    if kind < 0.5:
        return {"type": "trait", "trait": trait, "op": "equals", "value": rng.choice(values)}
    if kind < 0.8 and not isinstance(values[0], bool):
        return {"type": "trait", "trait": trait, "op": "in", "values": rng.sample(list(values), 2)}
    return {"type": "trait", "trait": trait, "op": "exists"}


def _event_condition(rng: random.Random, windowed: bool) -> dict[str, Any]:
    if rng.random() < 0.7:
        node: dict[str, Any] = {"type": "event", "event": rng.choice(TRACK_EVENTS)}
    else:
        node = {"type": "event", "event_type": "page", "event": rng.choice(PAGES)}
    op = rng.choices(("at_least", "at_most", "exactly"), (0.75, 0.15, 0.10))[0]
    node["count"] = {"op": op, "n": 0 if op == "exactly" else rng.randint(1, 6)}
    if windowed:
        node["window"] = {"days": rng.choice(WINDOWS)}
    return node


def _computed_condition(rng: random.Random, windowed: bool) -> dict[str, Any]:
    trait_id, aggregate, _ = rng.choice([c for c in COMPUTED if c[2] == windowed])
    threshold = rng.choice((1, 2, 3, 5)) if aggregate["kind"] == "count" else rng.choice((50, 100, 250, 1000))
    return {"type": "computed_trait", "trait": trait_id, "op": "gte", "value": threshold}


def _leaf(rng: random.Random, timed: bool) -> dict[str, Any]:
    """One leaf: a windowed one when ``timed``, else a trait, all-time event or computed trait."""
    if timed:
        return _computed_condition(rng, True) if rng.random() < 0.2 else _event_condition(rng, True)
    kind = rng.random()
    if kind < 0.55:
        return _trait_condition(rng)
    if kind < 0.8:
        return _event_condition(rng, False)
    return _computed_condition(rng, False)


def affected_condition(k: int) -> dict[str, Any]:
    """The k-th audience that reads ``plan`` and/or the Pricing page counters (7 and 30 days)."""
    step = k // 5
    pricing7 = {"type": "event", "event_type": "page", "event": PRICING,
                "count": {"op": "at_least", "n": 1 + (k % 5) + step}, "window": {"days": 7}}
    pricing30 = {"type": "event", "event_type": "page", "event": PRICING,
                 "count": {"op": "at_least", "n": 2 + step}, "window": {"days": 30}}
    template = k % 5
    if template == 0:
        return {"type": "trait", "trait": AFFECTED_TRAIT, "op": "equals", "value": PLANS[(2 + step) % 4]}
    if template == 1:
        return pricing7
    if template == 2:
        return {"type": "and", "conditions": [
            {"type": "trait", "trait": AFFECTED_TRAIT, "op": "in", "values": ["free", "trial"]}, pricing30]}
    if template == 3:
        return {"type": "or", "conditions": [
            {"type": "trait", "trait": AFFECTED_TRAIT, "op": "equals", "value": "enterprise"}, pricing7]}
    return {"type": "and", "conditions": [pricing7, {"type": "trait", "trait": "country", "op": "equals",
                                                      "value": "US"}]}


def build_catalog(audiences: int, affected: int, windowed_share: float,
                  seed: int = 4) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(audience definitions, computed trait definitions) as JSON documents.

    The first ``affected`` audiences read ``plan`` or the Pricing counters; no other
    audience reads them, directly or through an ``audience`` condition. Of the others, a
    share ``windowed_share`` reads a sliding window (is time-based).
    """
    if not 0 <= affected <= audiences:
        raise ValueError("affected must be between 0 and the number of audiences")
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = [
        {"id": f"hot-{k:03d}", "name": f"Pricing interest {k}", "condition": affected_condition(k)}
        for k in range(affected)]
    plain: list[str] = []  # other audiences that are not time-based
    timed_ids: list[str] = []
    for n in range(audiences - affected):
        timed = rng.random() < windowed_share
        shape = rng.random()
        if shape < 0.6:
            condition = _leaf(rng, timed)
        elif shape < 0.75:
            condition = {"type": "and", "conditions": [_leaf(rng, timed), _leaf(rng, False)]}
        elif shape < 0.85:
            condition = {"type": "or", "conditions": [_leaf(rng, timed), _leaf(rng, timed),
                                                      {"type": "not", "condition": _trait_condition(rng)}]}
        else:
            pool = timed_ids if timed else plain
            inner = _leaf(rng, timed)
            if pool:
                condition = {"type": "and", "conditions": [{"type": "audience", "audience": rng.choice(pool)},
                                                           {"type": "or", "conditions": [inner,
                                                                                         _trait_condition(rng)]}]}
            else:
                condition = {"type": "and", "conditions": [inner, _trait_condition(rng)]}
        audience_id = f"aud-{n:04d}"
        (timed_ids if timed else plain).append(audience_id)
        docs.append({"id": audience_id, "name": f"Audience {n}", "condition": condition})
    traits = [{"id": trait_id, "name": trait_id.replace("_", " "), "aggregate": aggregate}
              for trait_id, aggregate, _ in COMPUTED]
    return docs, traits


# --- profiles (pure) ----------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(kind: str, name: str, at: datetime, n: int, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    stamp = _iso(at)
    event: dict[str, Any] = {"type": kind, "timestamp": stamp, "receivedAt": stamp, "messageId": f"m-{n}-{stamp}",
                             "properties": properties or {}}
    event["event" if kind == "track" else "name"] = name
    return event


def profile_history(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    """A person's last 60 days: a few products areas used a few times, some orders, Pricing views."""
    events: list[dict[str, Any]] = []
    for name in rng.sample(TRACK_EVENTS, rng.randint(3, 7)):
        for _ in range(rng.randint(1, 6)):
            at = now - timedelta(days=rng.randint(0, HISTORY_DAYS), minutes=rng.randint(1, 1439))
            properties = {"total": round(rng.uniform(5, 400), 2)} if name == "Order Completed" else {}
            events.append(_event("track", name, at, len(events), properties))
    for name in rng.sample(PAGES, rng.randint(1, 3)):
        for _ in range(rng.randint(1, 4)):
            events.append(_event("page", name, now - timedelta(days=rng.randint(0, HISTORY_DAYS), minutes=7),
                                 len(events)))
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        events.append(_event("page", PRICING, now - timedelta(days=rng.randint(0, 20), minutes=3), len(events)))
    return [e for e in events if e["timestamp"] <= _iso(now)]


def profile_traits(rng: random.Random, n: int) -> dict[str, Any]:
    traits: dict[str, Any] = {"email": f"person{n}@example.com", "name": f"Person {n}",
                              "created_at": "2026-06-01T10:00:00Z", AFFECTED_TRAIT: rng.choice(PLANS)}
    for trait, values in TRAIT_VALUES.items():
        if rng.random() < 0.85:
            traits[trait] = rng.choice(values)
    for trait, (low, high) in NUMERIC_TRAITS.items():
        if rng.random() < 0.7:
            traits[trait] = rng.randint(low, high)
    return traits


def next_plan(plan: Any) -> str:
    return PLANS[(PLANS.index(plan) + 1) % len(PLANS)] if plan in PLANS else PLANS[0]


# --- cost (pure) -----------------------------------------------------------------------------


@dataclass
class PhaseFigures:
    """One phase's totals; ``per(x)`` divides by the profile changes delivered."""

    name: str
    changes: int = 0
    invocations: int = 0
    cpu_s: float = 0.0
    round_cpu_ms: list[float] = field(default_factory=list)  # CPU ms per change, per round
    invocation_cpu_ms: list[float] = field(default_factory=list)
    aws_calls: int = 0
    log_bytes: int = 0
    requests: dict[str, int] = field(default_factory=dict)  # "dynamodb Query" -> count
    write_units: float = 0.0
    read_units: float = 0.0
    kinesis_records: int = 0
    kinesis_on_demand_bytes: int = 0
    evaluations: int = 0  # audiences evaluated by ``decide`` (counted)

    def per(self, value: float) -> float:
        return value / self.changes if self.changes else 0.0

    @property
    def cpu_ms(self) -> float:
        """CPU ms per change: the median over rounds when there are several."""
        if self.round_cpu_ms:
            return statistics.median(self.round_cpu_ms)
        return self.per(self.cpu_s * 1000)


def cost_per_million(figures: PhaseFigures, memory_mb: int, batch: int) -> dict[str, float]:
    """$ per million profile changes by service (duration: CPU share + assumed latency per call)."""
    invocations = MILLION / batch
    cpu_ms = figures.cpu_ms * MILLION
    duration_ms = cpu_ms / cpu_share(memory_mb) + figures.per(figures.aws_calls) * MILLION * ASSUMED_AWS_CALL_LATENCY_MS
    log_bytes = figures.per(figures.log_bytes) * MILLION + invocations * ASSUMED_PLATFORM_LOG_BYTES
    return {
        "lambda_requests": invocations * PRICES.lambda_request,
        "lambda_duration": gb_seconds(duration_ms, memory_mb) * PRICES.lambda_gb_second_arm64,
        "dynamodb_writes": figures.per(figures.write_units) * MILLION * PRICES.dynamodb_write_unit,
        "dynamodb_reads": figures.per(figures.read_units) * MILLION * PRICES.dynamodb_read_unit,
        "kinesis_ingest": figures.per(figures.kinesis_on_demand_bytes) * MILLION / GB
        * PRICES.kinesis_on_demand_ingest_gb,
        "logs": log_bytes / GB * PRICES.logs_ingest_gb,
    }


def schedule_extrapolation(touched_share: float, profiles: int, schedule_per_touch: dict[str, float],
                           evaluator_per_change: dict[str, float], idle_run: dict[str, float]) -> dict[str, float]:
    """$ per day for ``profiles`` profiles: 24 hourly runs (``idle_run``: one run with nothing
    due) plus, at the midnight run, ``touched_share`` of the profiles touched and re-evaluated."""
    touched = profiles * touched_share
    per_touch = sum(schedule_per_touch.values()) + sum(evaluator_per_change.values())
    return {"touched_per_day": touched, "runs_per_day": 24.0, "idle_runs_usd": 24 * sum(idle_run.values()),
            "touch_usd": touched * sum(schedule_per_touch.values()),
            "evaluation_usd": touched * sum(evaluator_per_change.values()),
            "total_usd_per_day": 24 * sum(idle_run.values()) + touched * per_touch}


# --- the run (AWS) ---------------------------------------------------------------------------


class FastMotoServer(MotoServerProcess):
    """bench/moto_process.py's server, plus bench/backfill.py's read speed-up (moto's Query
    sorts the whole table on every call: about 0.2 s per membership Query at 15,000 items).
    Outcomes are unchanged; only moto's own time (another process) drops."""

    def start(self, timeout_s: float = 30.0) -> None:
        import subprocess
        import urllib.request
        from pathlib import Path

        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.segmentation", "--serve", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint} within {timeout_s} s")


def serve(port: int) -> None:
    from moto import server

    from bench.moto_process import back_up_touched_items_only
    from cdp.local import moto_speedups

    back_up_touched_items_only()
    moto_speedups.apply()  # the local stack's moto fixes (reads, dispatch, item responses)
    server.main(["-H", "127.0.0.1", "-p", str(port)])


def _deserialize(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {name: deserializer.deserialize(value) for name, value in item.items()}


class Bench:
    """The handler, warm, with the meter and the log capture around every call."""

    def __init__(self, moto: MotoServerProcess, args: argparse.Namespace) -> None:
        from bench.pipeline import LogCapture, point_at

        self.moto = moto
        self.args = args
        point_at(moto.endpoint)
        os.environ["CDP_SEGMENTS_CACHE_SECONDS"] = "86400"  # the catalog load is measured apart
        from tests.conftest import FakeLambdaContext, load_handler

        point_at(moto.endpoint)
        from cdp.aws import clients

        self.meter = AwsMeter(resources.TABLES)
        self.meter.install()
        clients.reset()
        start = time.process_time()
        self.module: Any = load_handler("segment_evaluator")
        self.import_cpu_ms = (time.process_time() - start) * 1000
        from cdp.observability import logger

        self.logs = LogCapture()
        logger.logger_handler.setStream(self.logs)  # type: ignore[attr-defined]
        self.context = FakeLambdaContext()
        self.clock = NOW
        self.sequence = 0
        self.profiler: cProfile.Profile | None = None
        self.profiler_result: cProfile.Profile | None = None
        self.evaluations = EvaluationCounter()

    # --- setup (unmeasured, but the meter keeps the items written: their sizes) ------------

    def fresh_tables(self) -> None:
        import boto3

        from cdp.local.provisioning import provision

        self.moto.reset()
        self.meter.reset_shadow()
        self.meter.phase = "setup"
        try:
            provision(boto3.session.Session())
        finally:
            self.meter.phase = None
        self.meter.settle()
        self.module.dependencies.cache_clear()

    def ddb(self) -> Any:
        import boto3

        return boto3.client("dynamodb")

    def register(self, audiences: list[dict[str, Any]], traits: list[dict[str, Any]]) -> Any:
        """Definitions and spec items in the segments table; returns the catalog as loaded."""
        from cdp.aws.definition_store import DefinitionStore
        from cdp.segmentation.catalog import CatalogStore, SpecRegistry
        from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition

        ddb = self.ddb()
        table = resources.SEGMENTS_TABLE.local_name
        store = DefinitionStore(ddb, table)
        parsed: list[AudienceDefinition | ComputedTraitDefinition] = []
        self.meter.phase = "setup"
        try:
            for doc in traits:
                parsed.append(ComputedTraitDefinition.model_validate(doc))
                store.put("computed_trait", doc["id"], json.dumps(doc), None)
            for doc in audiences:
                parsed.append(AudienceDefinition.model_validate(doc))
                store.put("audience", doc["id"], json.dumps(doc), None)
            SpecRegistry(ddb, table, now=lambda: REGISTERED).sync(parsed)
        finally:
            self.meter.phase = None
        self.meter.settle()
        return CatalogStore(ddb, table).current()

    def write_profiles(self, items: Sequence[dict[str, Any]]) -> None:
        ddb = self.ddb()
        table = resources.IDENTITY_TABLE.local_name
        self.meter.phase = "setup"
        try:
            for first in range(0, len(items), 25):
                chunk = items[first:first + 25]
                ddb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": i}} for i in chunk]})
        finally:
            self.meter.phase = None
        self.meter.settle()

    def renew_stream(self) -> None:
        from bench.pipeline import renew_stream

        renew_stream()

    # --- measured ---------------------------------------------------------------------------

    def stream_event(self, pairs: Sequence[tuple[dict[str, Any] | None, dict[str, Any]]]) -> dict[str, Any]:
        from cdp.local.lambda_events import DynamoDbChange, dynamodb_stream_arn, dynamodb_stream_event

        changes = []
        for old, new in pairs:
            self.sequence += 1
            changes.append(DynamoDbChange("MODIFY" if old else "INSERT", {"pk": new["pk"]["S"]},
                                          f"{self.sequence:021d}", self.clock, _deserialize(new),
                                          _deserialize(old) if old else None))
        arn = dynamodb_stream_arn(resources.IDENTITY_TABLE.local_name, "2026-11-01T00:00:00.000")
        return dynamodb_stream_event(changes, stream_arn=arn, view_type="NEW_AND_OLD_IMAGES")

    def deliver(self, phase: str, pairs: Sequence[tuple[dict[str, Any] | None, dict[str, Any]]],
                figures: PhaseFigures) -> float:
        """The pairs through the handler in ESM batches; returns the CPU seconds taken."""
        batch = resources.SEGMENT_EVALUATOR_ESM.batch_size
        events = [self.stream_event(pairs[i:i + batch]) for i in range(0, len(pairs), batch)]
        evaluator = self.module.dependencies()
        evaluator.now = lambda: self.clock
        total = 0.0
        counted_before = self.evaluations.count
        for event in events:
            # What the benchmark holds (the meter's shadow of every item written, the images)
            # is no part of a function: keep it out of the collections inside handler calls.
            gc.freeze()
            self.meter.phase = phase
            stdout, sys.stdout = sys.stdout, self.logs
            try:
                if self.profiler:
                    self.profiler.enable()
                start = time.process_time()
                response = self.module.handler(event, self.context)
                cpu = time.process_time() - start
                if self.profiler:
                    self.profiler.disable()
            finally:
                sys.stdout = stdout
                self.meter.phase = None
            if response.get("batchItemFailures"):
                raise AssertionError(f"evaluator reported failures: {response['batchItemFailures'][:3]}")
            figures.aws_calls += self.meter.pending_calls
            self.meter.settle()
            figures.log_bytes += len(self.logs.drain().encode("utf-8"))
            figures.invocations += 1
            figures.invocation_cpu_ms.append(cpu * 1000 / len(event["Records"]))
            total += cpu
        figures.changes += len(pairs)
        figures.cpu_s += total
        figures.evaluations += self.evaluations.count - counted_before
        return total

    def collect(self, figures: PhaseFigures) -> None:
        """The meter's counts of the phase into ``figures``."""
        phase = figures.name
        figures.requests = {f"{s} {o}": n for (p, s, o), n in sorted(self.meter.calls.items()) if p == phase}
        figures.write_units = sum(t.units for (p, _, _), t in self.meter.dynamodb.writes.items() if p == phase)
        figures.read_units = sum(t.units for (p, _, _), t in self.meter.dynamodb.reads.items() if p == phase)
        tally = self.meter.kinesis.get(phase)
        if tally:
            figures.kinesis_records = tally.records
            figures.kinesis_on_demand_bytes = tally.on_demand_bytes


class EvaluationCounter:
    """Counts the audiences ``decide`` evaluates: it builds one ``Facts`` per audience it
    evaluates (``next_change`` builds its own through ``facts_from_item``, not counted).
    The wrapper costs well under a microsecond per audience, inside the timed region."""

    def __init__(self) -> None:
        from cdp.segmentation import membership

        original = membership.Facts
        self.count = 0

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        setattr(membership, "Facts", counted)  # noqa: B010


def reading_the_change(catalog: Any) -> list[str]:
    """The audiences the dependency index names for the measured change (``plan`` and the
    Pricing counters); ``decide`` adds those whose stored ``next_check`` has come."""
    from cdp.segmentation.membership import DependencyIndex

    index = DependencyIndex.of(catalog)
    pricing = {sid for sid, active in catalog.specs.items()
               if active.spec.event_type == "page" and active.spec.event == PRICING}
    return index.affected(traits={AFFECTED_TRAIT}, aggregates=pricing)


def with_change(item: dict[str, Any], catalog: Any, now: datetime, *, pricing_view: bool, new_plan: bool,
                nickname: str | None = None) -> dict[str, Any]:
    """The profile item after one change (version + 1)."""
    from cdp.identity.profile_state import ProfileState, TraitValue, state_from_json, state_to_json
    from cdp.segmentation.tallies import fold_events, tallies_from_json, tallies_to_json

    new = dict(item)
    version = int(item["version"]["N"]) + 1
    new["version"] = {"N": str(version)}
    new["updated_at"] = {"S": _iso(now)}
    state = state_from_json(item["state"]["S"])
    traits = dict(state.traits)
    stamp = _iso(now - timedelta(minutes=1))
    if new_plan:
        traits[AFFECTED_TRAIT] = TraitValue(next_plan(traits[AFFECTED_TRAIT].value if AFFECTED_TRAIT in traits
                                                      else None), stamp, f"m-plan-{version}")
    if nickname is not None:
        traits["nickname"] = TraitValue(nickname, stamp, f"m-nick-{version}")
    new["state"] = {"S": state_to_json(ProfileState(traits, state.first_seen, state.last_seen_day))}
    if pricing_view:
        view = _event("page", PRICING, now - timedelta(minutes=1), version)
        tallies = fold_events(tallies_from_json(item.get("agg", {}).get("S")), catalog.specs, [(None, view)], now)
        new["agg"] = {"S": tallies_to_json(tallies)}
    return new


def make_profiles(count: int, catalog: Any, seed: int) -> list[dict[str, Any]]:
    from cdp.identity.profile_state import ProfileState, TraitValue, state_to_json
    from cdp.segmentation.tallies import Tallies, fold_events, tallies_to_json

    rng = random.Random(seed)
    items = []
    for n in range(count):
        history = profile_history(rng, NOW)
        traits = profile_traits(rng, n)
        state = ProfileState({k: TraitValue(v, "2026-06-01T10:00:00.000Z", f"m-t{n}") for k, v in traits.items()},
                             "2026-06-01T10:00:00.000Z", NOW.date().isoformat())
        agg = fold_events(Tallies(), catalog.specs, [(None, e) for e in history], NOW)
        items.append({"pk": {"S": f"prof#p{n:07d}"}, "status": {"S": "live"}, "version": {"N": "3"},
                      "ids": {"SS": [f"ident#user_id:user-{n:07d}", f"ident#anonymous_id:anon-{n:07d}"]},
                      "state": {"S": state_to_json(state)}, "agg": {"S": tallies_to_json(agg)},
                      "created_at": {"S": "2026-06-01T10:00:00.000Z"}, "updated_at": {"S": _iso(NOW)}})
    return items


@dataclass
class CatalogResult:
    audiences: int
    affected: int
    time_based: int
    specs: int
    profile_bytes: float
    catalog_load_cpu_ms: float
    phases: dict[str, PhaseFigures]
    schedule: dict[str, Any]


def run_catalog(bench: Bench, n: int, args: argparse.Namespace, progress: Any) -> CatalogResult:
    from cdp.aws.scheduled_reevaluation import CHECKPOINT_KEY, ScheduledReevaluation
    from cdp.segmentation.membership import DependencyIndex

    bench.fresh_tables()
    audience_docs, trait_docs = build_catalog(n, args.affected, args.windowed_share, seed=args.seed)
    catalog = bench.register(audience_docs, trait_docs)
    index = DependencyIndex.of(catalog)
    profiles = make_profiles(args.profiles, catalog, seed=args.seed)
    bench.write_profiles(profiles)
    bench.meter.clear_tallies()
    progress(f"N={n}: {len(catalog.audiences)} audiences, {len(index.time_based)} time-based, "
             f"{len(catalog.specs)} specs, {len(profiles)} profiles")

    # The first invocation loads the catalog and builds the index (once per cache period).
    load = PhaseFigures("catalog-load")
    bench.clock = NOW
    bench.renew_stream()
    first_pairs: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [(None, profiles[0])]
    load_cpu = bench.deliver("catalog-load", first_pairs, load)
    phases: dict[str, PhaseFigures] = {name: PhaseFigures(name) for name in PHASES}
    # 1. new profiles (the first was delivered with the catalog load; it is new too, counted there)
    new_pairs: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [(None, p) for p in profiles[1:]]
    bench.deliver("new", new_pairs, phases["new"])
    progress(f"N={n}: new profiles {phases['new'].per(phases['new'].cpu_s * 1000):.2f} CPU ms each")
    # 2. changes, in rounds
    current = profiles
    for r in range(args.runs):
        bench.renew_stream()
        bench.clock = NOW + timedelta(minutes=10 * (r + 1))
        changed = [with_change(item, catalog, bench.clock, pricing_view=True, new_plan=(i + r) % 2 == 0)
                   for i, item in enumerate(current)]
        bench.write_profiles(changed)
        cpu = bench.deliver("change", list(zip(current, changed, strict=True)), phases["change"])
        phases["change"].round_cpu_ms.append(cpu * 1000 / len(changed))
        current = changed
        progress(f"N={n}: change round {r + 1}: {cpu * 1000 / len(changed):.3f} CPU ms per change")
    if args.profile:
        # One more round of the same changes under cProfile (CPU clock), not counted in any figure.
        bench.renew_stream()
        bench.clock = NOW + timedelta(minutes=10 * (args.runs + 1))
        changed = [with_change(item, catalog, bench.clock, pricing_view=True, new_plan=i % 2 == 0)
                   for i, item in enumerate(current)]
        bench.write_profiles(changed)
        bench.profiler = cProfile.Profile(time.process_time)
        bench.deliver("profiled", list(zip(current, changed, strict=True)), PhaseFigures("profiled"))
        bench.profiler_result, bench.profiler = bench.profiler, None
        current = changed
    # 3. a change no audience reads
    bench.renew_stream()
    bench.clock = NOW + timedelta(minutes=10 * (args.runs + 2))
    untouched = [with_change(item, catalog, bench.clock, pricing_view=False, new_plan=False,
                             nickname=f"nick-{i}") for i, item in enumerate(current)]
    bench.write_profiles(untouched)
    bench.deliver("nothing", list(zip(current, untouched, strict=True)), phases["nothing"])
    current = untouched
    # 4. the scheduled re-evaluation of the next midnight, then the evaluator on the touched profiles
    ddb = bench.ddb()
    hour = MIDNIGHT.strftime("%Y-%m-%dT%H")
    bench.meter.phase = "setup"
    ddb.put_item(TableName=resources.SEGMENTS_TABLE.local_name, Item={
        "pk": {"S": CHECKPOINT_KEY}, "hour": {"S": (MIDNIGHT - timedelta(hours=1)).strftime("%Y-%m-%dT%H")},
        "updated_at": {"S": _iso(NOW)}})
    bench.meter.phase = None
    bench.meter.settle()
    memberships = list(bench.meter.dynamodb.stored_items(resources.MEMBERSHIPS_TABLE.local_name))
    due_ids = sorted({m["profile_id"]["S"] for m in memberships
                      if m.get("next_check", {}).get("S", "").startswith(hour + "#")})
    with_check = sum(1 for m in memberships if "next_check" in m)
    # Profiles due per UTC hour over the next 30 days, as the memberships stand now (no new activity).
    due_by_hour: dict[str, set[str]] = {}
    for m in memberships:
        check = m.get("next_check", {}).get("S")
        if check:
            due_by_hour.setdefault(check.partition("#")[0], set()).add(m["profile_id"]["S"])
    horizon = [(MIDNIGHT + timedelta(hours=h)).strftime("%Y-%m-%dT%H") for h in range(30 * 24)]
    due_30_days = sum(len(due_by_hour.get(h, ())) for h in horizon)
    off_midnight = sum(len(due_by_hour.get(h, ())) for h in horizon if not h.endswith("T00"))
    scheduler = ScheduledReevaluation(ddb, resources.MEMBERSHIPS_TABLE.local_name,
                                      resources.IDENTITY_TABLE.local_name, resources.SEGMENTS_TABLE.local_name,
                                      now=lambda: SCHEDULE_RUN_AT)
    figures = phases["schedule"]
    bench.meter.phase = "schedule"
    stdout, sys.stdout = sys.stdout, bench.logs
    try:
        start = time.process_time()
        run = scheduler.run()
        figures.cpu_s = time.process_time() - start
    finally:
        sys.stdout = stdout
        bench.meter.phase = None
    figures.aws_calls = bench.meter.pending_calls
    bench.meter.settle()
    bench.logs.drain()
    figures.changes = run.touched
    figures.invocations = 1
    if run.touched != len(due_ids):
        raise AssertionError(f"schedule touched {run.touched} profiles, {len(due_ids)} were due")
    # An idle hourly run (nothing due): the fixed cost of the other 23 runs of the day.
    idle = PhaseFigures("schedule-idle")
    bench.meter.phase = "schedule-idle"
    idle_scheduler = ScheduledReevaluation(ddb, resources.MEMBERSHIPS_TABLE.local_name,
                                           resources.IDENTITY_TABLE.local_name, resources.SEGMENTS_TABLE.local_name,
                                           now=lambda: SCHEDULE_RUN_AT + timedelta(hours=1))
    stdout, sys.stdout = sys.stdout, bench.logs
    try:
        start = time.process_time()
        idle_scheduler.run()
        idle.cpu_s = time.process_time() - start
    finally:
        sys.stdout = stdout
        bench.meter.phase = None
    idle.aws_calls = bench.meter.pending_calls
    bench.meter.settle()
    bench.logs.drain()
    idle.changes = 1
    idle.invocations = 1
    bench.collect(idle)
    # The touches' stream records: old image as stored, new with version + 1 and checked_at.
    # The touches' stream records: the old image as it was, the new one as the meter's
    # shadow has it (the touch's UpdateItem applied, by moto's own expression code).
    by_id = {item["pk"]["S"].removeprefix("prof#"): item for item in current}
    after = {item["pk"]["S"].removeprefix("prof#"): item
             for item in bench.meter.dynamodb.stored_items(resources.IDENTITY_TABLE.local_name)}
    touched_pairs: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [
        (by_id[profile_id], after[profile_id]) for profile_id in due_ids]
    if any(new["version"] == old["version"] for old, new in touched_pairs if old):
        raise AssertionError("a touched profile kept its version")
    bench.renew_stream()
    bench.clock = SCHEDULE_RUN_AT
    if touched_pairs:
        bench.deliver("scheduled-eval", touched_pairs, phases["scheduled-eval"])
    for phase in phases.values():
        bench.collect(phase)
    bench.collect(load)
    phases["catalog-load"] = load
    phases["schedule-idle"] = idle
    schedule = {"due_memberships": run.due, "touched": run.touched, "profiles": len(profiles),
                "memberships_with_next_check": with_check, "memberships": len(memberships),
                "touched_share": run.touched / len(profiles),
                "due_profile_hours_next_30_days": due_30_days, "of_which_not_at_midnight": off_midnight,
                "mean_daily_share_next_30_days": due_30_days / 30 / len(profiles)}
    sizes = [item_size(i) for i in current]
    return CatalogResult(n, args.affected, len(index.time_based), len(catalog.specs), statistics.mean(sizes),
                         load_cpu * 1000, phases, schedule)


# --- report ------------------------------------------------------------------------------------


def our_code(stats: pstats.Stats, limit: int) -> list[str]:
    """The top entries of our code (shared/cdp and functions/) by own and cumulative time."""
    raw: Any = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        if "/cdp/" not in filename and "/functions/" not in filename:
            continue
        where = filename.split("/shared/")[-1].split("/functions/")[-1]
        rows.append((tottime, cumtime, calls, f"{where}:{line}({name})"))
    out = ["  own s    cum s     calls  function (by cumulative)"]
    for tottime, cumtime, calls, label in sorted(rows, key=lambda r: -r[1])[:limit]:
        out.append(f"{tottime:7.3f}  {cumtime:7.3f}  {calls:8d}  {label}")
    out.append("  own s    cum s     calls  function (by own time)")
    for tottime, cumtime, calls, label in sorted(rows, key=lambda r: -r[0])[:limit]:
        out.append(f"{tottime:7.3f}  {cumtime:7.3f}  {calls:8d}  {label}")
    return out


def print_result(result: CatalogResult, memory_mb: int, batch: int) -> dict[str, Any]:
    print(f"\n=== {result.audiences} audiences ({result.affected} affected by the change, "
          f"{result.time_based} time-based, {result.specs} aggregate specs); profile item "
          f"{result.profile_bytes:.0f} B mean; catalog load + index on the first call: "
          f"{result.catalog_load_cpu_ms:.1f} CPU ms")
    header = (f"{'phase':<15}{'changes':>8}{'evaluated':>10}{'CPU ms/chg':>11}{'p95 inv':>9}{'DDB req':>8}"
              f"{'WRU':>7}{'RRU':>7}{'Kin rec':>8}{'calls':>7}{'$/M chg':>9}")
    print(header)
    out: dict[str, Any] = {}
    for name in ("new", "change", "nothing", "scheduled-eval"):
        f = result.phases[name]
        if not f.changes:
            continue
        ddb = sum(v for k, v in f.requests.items() if k.startswith("dynamodb"))
        cost = cost_per_million(f, memory_mb, batch)
        per_inv = sorted(f.invocation_cpu_ms)
        p95 = per_inv[int(0.95 * (len(per_inv) - 1))] if per_inv else 0.0
        print(f"{name:<15}{f.changes:>8}{f.per(f.evaluations):>10.1f}{f.cpu_ms:>11.3f}{p95:>9.3f}{f.per(ddb):>8.3f}"
              f"{f.per(f.write_units):>7.3f}{f.per(f.read_units):>7.3f}{f.per(f.kinesis_records):>8.3f}"
              f"{f.per(f.aws_calls):>7.2f}{sum(cost.values()):>9.3f}")
        out[name] = {"changes": f.changes, "audiences_evaluated_per_change": f.per(f.evaluations),
                     "cpu_ms_per_change": f.cpu_ms,
                     "cpu_ms_rounds": f.round_cpu_ms, "cpu_ms_per_change_p95_invocation": p95,
                     "requests_per_change": {k: f.per(v) for k, v in f.requests.items()},
                     "write_units_per_change": f.per(f.write_units), "read_units_per_change": f.per(f.read_units),
                     "kinesis_records_per_change": f.per(f.kinesis_records),
                     "lambda_invocations_per_1000": f.per(f.invocations) * 1000,
                     "log_bytes_per_change": f.per(f.log_bytes), "cost_per_million_usd": cost}
    change = result.phases["change"]
    print(f"change: requests per change {', '.join(f'{k} {change.per(v):.3f}' for k, v in change.requests.items())}; "
          f"Lambda invocations per 1,000 changes {1000 / batch:.0f} in full batches of {batch} "
          f"(this run: {change.per(change.invocations) * 1000:.1f})")
    cost = cost_per_million(change, memory_mb, batch)
    print("change: $ per million changes: " + ", ".join(f"{k} {v:.3f}" for k, v in cost.items())
          + f"; total {sum(cost.values()):.3f}")
    target = result.audiences == 100 and result.affected == 5
    if target:
        verdict = "met" if change.cpu_ms <= TARGET_CPU_MS else "NOT met"
        print(f"target <= {TARGET_CPU_MS} ms CPU per change (100 audiences, 5 affected): {change.cpu_ms:.3f} ms, "
              f"{verdict}")
    # Scheduled re-evaluation
    s, idle, evaluation = result.phases["schedule"], result.phases["schedule-idle"], result.phases["scheduled-eval"]
    sched = result.schedule
    per_touch = {"dynamodb_writes": s.per(s.write_units) * PRICES.dynamodb_write_unit,
                 "dynamodb_reads": s.per(s.read_units) * PRICES.dynamodb_read_unit,
                 "lambda_duration": gb_seconds(s.per(s.cpu_s * 1000) / cpu_share(memory_mb)
                                               + s.per(s.aws_calls) * ASSUMED_AWS_CALL_LATENCY_MS, memory_mb)
                 * PRICES.lambda_gb_second_arm64}
    evaluator_per = {k: v / MILLION for k, v in cost_per_million(evaluation, memory_mb, batch).items()} \
        if evaluation.changes else {}
    idle_cost = {"dynamodb_reads": idle.read_units * PRICES.dynamodb_read_unit,
                 "dynamodb_writes": idle.write_units * PRICES.dynamodb_write_unit,
                 "lambda": PRICES.lambda_request + gb_seconds(idle.cpu_s * 1000 / cpu_share(memory_mb)
                                                              + idle.aws_calls * ASSUMED_AWS_CALL_LATENCY_MS,
                                                              memory_mb) * PRICES.lambda_gb_second_arm64}
    extrapolated = schedule_extrapolation(sched["touched_share"], MILLION, per_touch, evaluator_per, idle_cost)
    print(f"schedule run of hour {MIDNIGHT:%Y-%m-%dT%H} over {result.schedule['profiles']} profiles: "
          f"{sched['due_memberships']} due memberships (of {sched['memberships_with_next_check']} with a next_check, "
          f"{sched['memberships']} stored), {sched['touched']} profiles touched "
          f"({100 * sched['touched_share']:.1f} %); CPU {s.cpu_s * 1000:.1f} ms "
          f"({s.per(s.cpu_s * 1000):.3f} ms per touch); requests "
          f"{', '.join(f'{k} {v}' for k, v in s.requests.items())}; WRU {s.write_units:.0f} "
          f"({s.per(s.write_units):.2f} per touch), RRU {s.read_units:.1f}")
    print(f"idle hourly run: requests {', '.join(f'{k} {v}' for k, v in idle.requests.items())}, "
          f"RRU {idle.read_units:.1f}, WRU {idle.write_units:.0f}, CPU {idle.cpu_s * 1000:.1f} ms")
    print(f"1 million profiles, extrapolated: {extrapolated['touched_per_day']:,.0f} profiles touched per day "
          f"(the measured {100 * sched['touched_share']:.1f} % due at the midnight run; every window flips at "
          f"a UTC midnight, so the other 23 hourly runs find ~nothing due) -> "
          f"${extrapolated['total_usd_per_day']:.2f} per day (touch ${extrapolated['touch_usd']:.2f}, "
          f"re-evaluation ${extrapolated['evaluation_usd']:.2f}, 24 runs' fixed part "
          f"${extrapolated['idle_runs_usd']:.4f}), ${30 * extrapolated['total_usd_per_day']:.0f} per 30 days")
    if "mean_daily_share_next_30_days" in sched:
        later = schedule_extrapolation(sched["mean_daily_share_next_30_days"], MILLION, per_touch, evaluator_per,
                                       idle_cost)
        print(f"  second estimate: the next_check values stored now put {sched['due_profile_hours_next_30_days']} "
              f"profile touches in the next 30 days ({sched['of_which_not_at_midnight']} not at a midnight): "
              f"{100 * sched['mean_daily_share_next_30_days']:.1f} % of profiles per day if no new activity -> "
              f"${later['total_usd_per_day']:.2f} per day for 1 million profiles")
        extrapolated = {**extrapolated, "from_30_day_mean_usd_per_day": later["total_usd_per_day"]}
    out["schedule"] = {**sched, "cpu_ms": s.cpu_s * 1000, "requests": s.requests, "write_units": s.write_units,
                       "read_units": s.read_units, "idle_run_requests": idle.requests,
                       "idle_run_read_units": idle.read_units, "cost_per_touch_usd": per_touch,
                       "evaluator_cost_per_touched_change_usd": evaluator_per,
                       "one_million_profiles_per_day": extrapolated}
    return {"audiences": result.audiences, "affected": result.affected, "time_based": result.time_based,
            "specs": result.specs, "profile_item_bytes": result.profile_bytes,
            "catalog_load_cpu_ms": result.catalog_load_cpu_ms, **out}


def main(argv: list[str] | None = None) -> int:
    from bench.pipeline import OtherWork, machine

    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--serve"]:
        serve(int(arguments[1]))
        return 0

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audiences", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--affected", type=int, default=5, help="audiences reading what the change touches")
    parser.add_argument("--windowed-share", type=float, default=0.4,
                        help="share of the other audiences that read a sliding window (time-based)")
    parser.add_argument("--profiles", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5, help="change rounds (CPU: their median)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="cProfile the first change round")
    parser.add_argument("--json", type=str, default=None, help="also write every figure to this file")
    args = parser.parse_args(arguments)
    memory = resources.SEGMENT_EVALUATOR_FUNCTION.memory_mb
    batch = resources.SEGMENT_EVALUATOR_ESM.batch_size

    def progress(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    results = []
    with FastMotoServer() as moto:
        bench = Bench(moto, args)
        host = machine()
        other = OtherWork(moto.pid)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in host.items()))
        print(f"evaluator: {memory} MB arm64, ESM batches of {batch}; catalog: {args.affected} affected "
              f"audiences, windowed share of the others {args.windowed_share}; {args.profiles} profiles; "
              f"{args.runs} change rounds (CPU per change: median of rounds); module import "
              f"{bench.import_cpu_ms:.0f} CPU ms")
        for n in args.audiences:
            bench.profiler_result = None
            result = run_catalog(bench, n, args, progress)
            results.append(print_result(result, memory, batch))
            if args.profile and bench.profiler_result is not None:
                stats = pstats.Stats(bench.profiler_result, stream=io.StringIO())
                print(f"cProfile, first change round, {n} audiences (our code):")
                print("\n".join(our_code(stats, 25)))
        share = other.share_of_one_cpu()
        speed_end = machine()["speed_check_ms"]
    print(f"\nother work during the run: {share if share is None else round(share, 3)} CPUs; speed check "
          f"{host['speed_check_ms']} -> {speed_end} ms")
    unsupported = Counter(bench.meter.dynamodb.unsupported)
    if unsupported:
        print(f"approximated by the meter: {dict(unsupported)}")
    document = {"bench": "segmentation", "machine": host, "memory_mb": memory, "esm_batch": batch,
                "profiles": args.profiles, "runs": args.runs, "windowed_share": args.windowed_share,
                "assumed_aws_call_latency_ms": ASSUMED_AWS_CALL_LATENCY_MS, "results": results}
    line = json.dumps(document, sort_keys=True, default=str)
    print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
