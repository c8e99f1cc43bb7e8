"""Benchmark of the pipeline: collector -> Kinesis -> stream consumer (store, unify).

    .venv/bin/python -m bench.pipeline --events 100000            # the published run
    .venv/bin/python -m bench.pipeline --events 500 --runs 1      # smoke (< 60 s)
    .venv/bin/python -m bench.pipeline --events 20000 --profile   # where the CPU goes
    .venv/bin/python -m bench.pipeline --traffic identity --events 50000  # identity resolution

Traffic: ``mixed`` (bench/segment_traffic.py: each event's person drawn at random from
a pool) or ``identity`` (bench/identity_traffic.py: people with devices and sessions
over time, the reference mix of identity resolution).

moto runs as a separate server process, so only our code (and boto3's work on the
client side, which Lambda pays for too) is inside ``time.process_time()``, taken
around each handler call and nothing else; it counts every thread of the process,
and when a handler runs work in a thread pool the report splits it by thread. AWS
requests are counted with botocore hooks (bench/aws_meter.py) and DynamoDB request
units computed by DynamoDB's rules.
docs/benchmarks.md explains the method, the assumptions and the latest figures.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import gc
import importlib
import io
import json
import math
import os
import platform
import pstats
import secrets
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.aws_meter import AwsMeter
from bench.cost_model import (
    GB,
    HOURS_PER_MONTH,
    LAMBDA_MB_PER_VCPU,
    MILLION,
    PRICES,
    CostLine,
    cpu_share,
    gb_seconds,
)
from bench.identity_traffic import IdentityMix, IdentityTrafficGenerator
from bench.moto_process import MotoServerProcess, free_port
from bench.segment_traffic import (
    SDK_BATCH_SIZE,
    TRAFFIC_MIX,
    SdkRequest,
    SegmentTrafficGenerator,
    event_size,
)
from cdp import resources

REPO = Path(__file__).resolve().parents[1]
WRITE_KEY = "bench-write-key"
SOURCE_ID = "src_bench"
# Targets of the collection pipeline (issue): CPU per event and invocations per 1,000 events.
TARGET_COLLECTOR_CPU_MS = 0.3
TARGET_CONSUMER_CPU_MS = 1.0
TARGET_INVOCATIONS_PER_1000 = 15
# Targets of identity resolution (issue 3), on the reference identity mix: DynamoDB
# request units per event, the whole pipeline.
TARGET_WRITE_UNITS_PER_EVENT = 1.5
TARGET_READ_UNITS_PER_EVENT = 2.0
# Assumptions of the duration estimate and the log volume (stated in every report).
ASSUMED_AWS_CALL_LATENCY_MS = 10.0
# START, END and REPORT lines Lambda writes per invocation, plus the XRAY line of an
# active-tracing function: about 330 bytes together.
ASSUMED_PLATFORM_LOG_BYTES = 330
COLLECTOR = "collector"
CONSUMER = "consumer"


# --- environment ---------------------------------------------------------------------


def point_at(endpoint: str, tracing: bool = False) -> None:
    """Environment of a deployed function, with AWS replaced by the moto server.

    Must run before cdp.observability or a handler is imported: Powertools reads its
    variables at import, boto3 reads AWS_ENDPOINT_URL when a client is created.
    With ``tracing``, Powertools' Tracer runs as in a function with active tracing
    (X-Ray SDK patched into botocore, a subsegment per handler and AWS call), sending
    its UDP datagrams to a local port where nothing listens.
    """
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            # As in infra/constructs/function.py.
            "POWERTOOLS_SERVICE_NAME": "cdp",
            "POWERTOOLS_METRICS_NAMESPACE": "CDP",
            "LOG_LEVEL": "INFO",
            "POWERTOOLS_TRACE_DISABLED": "false" if tracing else "true",
            "POWERTOOLS_DEV": "false",
        }
    )
    if tracing:
        os.environ.update(
            {
                "LAMBDA_TASK_ROOT": str(REPO),  # the X-Ray SDK and Powertools look for it
                "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{free_port()}",
                "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
                "_X_AMZN_TRACE_ID": new_trace_header(),
            }
        )


def new_trace_header() -> str:
    """What Lambda sets per invocation of a function with active tracing (sampled)."""
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=1"


def product_revision() -> str:
    """The commit the handlers come from, and whether their code differs from it."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "functions", "shared"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head}" + (" with uncommitted changes in functions/ or shared/" if dirty else "")


def speed_check() -> float:
    """CPU ms of a fixed pure-Python workload (JSON round trips), best of 3.

    The VM's speed drifts by 10-20 % within minutes even when nothing else runs (CPU
    frequency, the host's other guests): taken at the start and the end of a run, it
    says whether two runs' CPU figures can be compared directly.
    """
    document = {"items": [1, 2.5, "three", {"four": "x" * 50, "five": [True, None]}] * 20}
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        for _ in range(2000):
            json.loads(json.dumps(document))
        best = min(best, time.process_time() - start)
    return best * 1000


class OtherWork:
    """CPU time the rest of the machine used during the runs (Linux /proc; else unknown).

    All CPUs' busy time (/proc/stat: user, nice, system, irq, softirq) less this
    process's and the moto server's: unlike the load average, it does not depend on
    how many threads the benchmark and moto run.
    """

    def __init__(self, moto_pid: int | None) -> None:
        self._moto_pid = moto_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        hz = os.sysconf("SC_CLK_TCK")
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in handle.readline().split()[1:8])
            moto = 0.0
            if self._moto_pid:
                with open(f"/proc/{self._moto_pid}/stat", encoding="ascii") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                moto = (int(fields[11]) + int(fields[12])) / hz
        except (OSError, ValueError):
            return None
        times = os.times()
        return (user + nice + system + irq + softirq) / hz, times.user + times.system + moto, time.monotonic()

    def share_of_one_cpu(self) -> float | None:
        """Mean CPU use of everything else since construction, in CPUs (1.0 = one core busy)."""
        end = self._sample()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return None
        busy, ours, wall = (b - a for a, b in zip(self._start, end, strict=True))
        return max(0.0, busy - ours) / wall


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        # Other work on the machine slows the handlers down, CPU time included: check it.
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "speed_check_ms": f"{speed_check():.1f}",
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "product": product_revision(),
    }


# --- captured stdout (what CloudWatch Logs would ingest) -------------------------------


class LogCapture(io.TextIOBase):
    """Stands in for stdout during handler calls; keeps what the function printed."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return len(text)

    def drain(self) -> str:
        text = "".join(self.chunks)
        self.chunks.clear()
        return text


# --- measurements ------------------------------------------------------------------------


@dataclass
class Invocation:
    cpu_s: float  # whole process: the handler's thread and its pool threads
    events: int
    aws_calls: int
    log_bytes: int
    parallel_calls: int = 0  # of aws_calls, those made from other threads than the handler's
    parallel_threads: int = 0  # how many such threads made calls
    handler_thread_cpu_s: float = 0.0  # of cpu_s: the handler's own thread
    pool_cpu_s: float = 0.0  # of cpu_s: callables the handler ran in thread pools

    @property
    def sequential_calls(self) -> float:
        """Round trips one after the other: the handler thread's calls, plus the other
        threads' calls in rounds of as many as there were threads."""
        rounds = math.ceil(self.parallel_calls / self.parallel_threads) if self.parallel_threads else 0
        return self.aws_calls - self.parallel_calls + rounds


@dataclass
class RunResult:
    events: int
    stored: int = 0
    collector: list[Invocation] = field(default_factory=list)
    consumer: list[Invocation] = field(default_factory=list)
    wall_s: float = 0.0
    identity: IdentityOutcome | None = None

    def cpu_ms_per_event(self, name: str) -> float:
        calls = self.collector if name == COLLECTOR else self.consumer
        return sum(c.cpu_s for c in calls) * 1000 / self.events


class PoolTap:
    """Work a handler runs in a thread pool: account (and profile) it too.

    (The consumer claimed its messageIds from a pool of 16 threads at commit 6d330bc;
    the current code runs no pool, and then this does nothing.)

    While installed, every callable submitted to a ``ThreadPoolExecutor`` during a
    handler call is timed with ``time.thread_time`` (its own thread's CPU), so the
    report can split a call's process CPU into the handler's thread and the pool.
    During a profiled call it also runs under a profiler of its own thread and phase;
    the report merges those with the handler thread's profile. All profilers use
    ``time.thread_time``: with ``process_time`` a thread waiting on the network would
    be charged the CPU the other threads use meanwhile.
    """

    def __init__(self, harness: Harness) -> None:
        self._harness = harness
        self._local = threading.local()
        self.profiles: dict[str, list[cProfile.Profile]] = defaultdict(list)
        self._cpu: list[float] = []  # appended from the pool threads (atomic under the GIL)
        self._original = ThreadPoolExecutor.submit

    def drain_cpu(self) -> float:
        """CPU seconds of the pool callables since the last drain."""
        taken, self._cpu = self._cpu, []
        return sum(taken)

    def _profiler(self, phase: str) -> cProfile.Profile:
        mine: dict[str, cProfile.Profile] = self._local.__dict__.setdefault("profilers", {})
        if phase not in mine:
            mine[phase] = cProfile.Profile(time.thread_time)
            self.profiles[phase].append(mine[phase])
        return mine[phase]

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original, tap = self._original, self

        def submit(executor: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            phase = tap._harness.meter.phase
            if phase is None:
                return original(executor, fn, *args, **kwargs)
            profiling = phase in tap._harness.profilers

            def tapped(*a: Any, **k: Any) -> Any:
                profiler = tap._profiler(phase) if profiling else None
                start = time.thread_time()
                if profiler:
                    profiler.enable()
                try:
                    return fn(*a, **k)
                finally:
                    if profiler:
                        profiler.disable()
                    tap._cpu.append(time.thread_time() - start)

            return original(executor, tapped, *args, **kwargs)

        ThreadPoolExecutor.submit = submit  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            ThreadPoolExecutor.submit = original  # type: ignore[method-assign]


@dataclass
class Harness:
    """The two handlers, warm, with the meter and the log capture around every call."""

    collector: Any
    consumer: Any
    context: Any
    meter: AwsMeter
    logs: LogCapture
    metric_names: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    profilers: dict[str, cProfile.Profile] = field(default_factory=dict)
    tracing: bool = False
    pool: PoolTap | None = None

    def call(self, name: str, event: dict[str, Any], events: int) -> tuple[dict[str, Any], Invocation]:
        handler = self.collector.handler if name == COLLECTOR else self.consumer.handler
        context = self.context
        if self.tracing:
            os.environ["_X_AMZN_TRACE_ID"] = new_trace_header()
        self.meter.phase = name
        stdout, sys.stdout = sys.stdout, self.logs
        profiler = self.profilers.get(name)
        try:
            if profiler:
                profiler.enable()
            start, thread_start = time.process_time(), time.thread_time()
            response = handler(event, context)
            cpu, thread_cpu = time.process_time() - start, time.thread_time() - thread_start
            if profiler:
                profiler.disable()
        finally:
            sys.stdout = stdout
            self.meter.phase = None
        calls = self.meter.pending_calls
        parallel, threads = self.meter.pending_calls_off_thread(threading.get_ident())
        self.meter.settle()
        printed = self.logs.drain()
        self._learn_from_logs(name, printed)
        log_bytes = len(printed.encode("utf-8"))
        pool_cpu = self.pool.drain_cpu() if self.pool else 0.0
        invocation = Invocation(cpu, events, calls, log_bytes, parallel, threads, thread_cpu, pool_cpu)
        return response, invocation

    def _learn_from_logs(self, name: str, printed: str) -> None:
        """Metric names in the EMF blobs: each name (with its dimensions) is a custom metric."""
        for line in printed.splitlines():
            if '"_aws"' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                blob = json.loads(line)
                for directive in blob["_aws"]["CloudWatchMetrics"]:
                    for metric in directive["Metrics"]:
                        self.metric_names[name].add(metric["Name"])


def load_harness(meter: AwsMeter, endpoint: str, tracing: bool) -> tuple[Harness, dict[str, float]]:
    """Import the handlers with the meter installed first; also returns the CPU of each import
    (the INIT phase of a cold start, less boto3's import: the benchmark has loaded it)."""
    from tests.conftest import FakeLambdaContext, load_handler

    point_at(endpoint, tracing)  # again: importing tests.conftest sets its own defaults
    from cdp.aws import clients

    meter.install()
    clients.reset()
    init: dict[str, float] = {}
    modules: dict[str, Any] = {}
    for name, folder in ((COLLECTOR, "collector"), (CONSUMER, "stream_consumer")):
        start = time.process_time()
        modules[name] = load_handler(folder)
        init[name] = time.process_time() - start
    from cdp.observability import logger

    logs = LogCapture()
    logger.logger_handler.setStream(logs)  # type: ignore[attr-defined]
    harness = Harness(modules[COLLECTOR], modules[CONSUMER], FakeLambdaContext(), meter, logs, tracing=tracing)
    return harness, init


def integration_fixtures() -> Any:
    """``tests.integration.conftest`` (create_resources, http_event), imported at run time.

    A static import would make ``mypy bench`` type-check that test module too, and it
    has a boto3-stubs error of its own (SourceRegistry(Table)) that is not bench's.
    """
    return importlib.import_module("tests.integration.conftest")


# Audience and computed trait definitions to load before the traffic (``--definitions``).
DEFINITIONS: dict[str, Path | None] = {"dir": None}


def load_definitions(directory: Path) -> None:
    """The definitions of ``directory`` (as ``examples/audiences``) in the segments table,
    with their aggregate specs live since long ago: the consumer folds every event."""
    import boto3

    from cdp.aws.definition_store import DefinitionStore
    from cdp.local.demo import example_definitions
    from cdp.segmentation.catalog import SpecRegistry
    from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition

    ddb = boto3.client("dynamodb")
    store = DefinitionStore(ddb, resources.SEGMENTS_TABLE.local_name)
    models: list[AudienceDefinition | ComputedTraitDefinition] = []
    for collection, body in example_definitions(directory):
        model = (AudienceDefinition if collection == "audiences" else ComputedTraitDefinition).model_validate(body)
        store.put("audience" if collection == "audiences" else "computed_trait", model.id,
                  model.model_dump_json(), None)
        models.append(model)
    SpecRegistry(ddb, resources.SEGMENTS_TABLE.local_name, cache_seconds=0,
                 now=lambda: datetime(2000, 1, 1, tzinfo=UTC)).sync(models)


def prepare_aws(moto: MotoServerProcess, meter: AwsMeter) -> None:
    """Empty moto, then the tables, stream, bucket and queue of cdp.resources, and a source."""
    import boto3

    from cdp.sources import SourceRegistry

    create_resources = integration_fixtures().create_resources

    moto.reset()
    meter.reset_shadow()
    meter.phase = "setup"
    try:
        create_resources()
        table: Any = boto3.resource("dynamodb").Table(resources.SOURCES_TABLE.local_name)
        SourceRegistry(table).create_source("bench source", write_key=WRITE_KEY, source_id=SOURCE_ID)
        if DEFINITIONS["dir"] is not None:
            load_definitions(DEFINITIONS["dir"])
    finally:
        meter.phase = None
    meter.settle()


def stream_records() -> tuple[str, list[dict[str, Any]]]:
    """Every record on the stream, oldest first, shaped as Lambda's Kinesis event records
    (same shape as tests/integration/conftest.read_stream_as_lambda_event)."""
    import boto3

    kinesis = boto3.client("kinesis")
    name = resources.EVENT_STREAM.local_name
    description = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    out: list[dict[str, Any]] = []
    for shard in description["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if not page["Records"]:
                break
            for r in page["Records"]:
                out.append(
                    {
                        "kinesis": {
                            "kinesisSchemaVersion": "1.0",
                            "partitionKey": r["PartitionKey"],
                            "sequenceNumber": r["SequenceNumber"],
                            "data": base64.b64encode(r["Data"]).decode(),
                            "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp(),
                        },
                        "eventSource": "aws:kinesis",
                        "eventVersion": "1.0",
                        "eventID": f"{shard['ShardId']}:{r['SequenceNumber']}",
                        "eventName": "aws:kinesis:record",
                        "invokeIdentityArn": "arn:aws:iam::123456789012:role/consumer",
                        "awsRegion": "us-east-1",
                        "eventSourceARN": description["StreamARN"],
                    }
                )
            iterator = page.get("NextShardIterator")
    return description["StreamARN"], out


def scan_items(table_name: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of a table in moto (not metered: no phase is set)."""
    import boto3

    paginator = boto3.client("dynamodb").get_paginator("scan")
    for page in paginator.paginate(TableName=table_name, **kwargs):
        yield from page.get("Items", [])


def item_count(table_name: str) -> int:
    """moto's live item count (real DynamoDB refreshes ItemCount only every ~6 h)."""
    import boto3

    table = boto3.client("dynamodb").describe_table(TableName=table_name)
    return int(table["Table"]["ItemCount"])


def history_count(meter: AwsMeter) -> int:
    """Items of the events table that are event history (``u#`` / ``a#`` partitions, one per
    event; the table also holds the unification stage's ``p#`` and ``g#`` records), as the
    meter saw them written: every accepted write request, applied in order. (Counting in moto
    takes a paginated scan, and moto's scan walks the whole table for every page.)"""
    return sum(
        1
        for item in meter.dynamodb.stored_items(resources.EVENTS_TABLE.local_name)
        if item["pk"]["S"].startswith(("u#", "a#"))
    )


def renew_stream() -> None:
    """Delete and create the event stream (not metered): moto's Kinesis slows down as a
    stream grows (see ``run_pipeline``); the tables keep everything."""
    import boto3

    from cdp.local.provisioning import ensure_stream

    kinesis = boto3.client("kinesis")
    kinesis.delete_stream(StreamName=resources.EVENT_STREAM.local_name, EnforceConsumerDeletion=True)
    ensure_stream(kinesis, resources.EVENT_STREAM)


@dataclass
class IdentityOutcome:
    """What identity resolution left in the tables after a run (read from moto)."""

    profiles: int = 0  # prof# items: every profile ever created
    live: int = 0
    merged: int = 0  # status "merged": merged into another profile
    identifiers: int = 0  # ident# items
    accounts: int = 0  # acct# items
    merge_log: int = 0  # p#<id> / merge#<id> records in the events table
    blocked: int = 0  # p#<id> / blocked#<messageId> records
    account_links: int = 0  # p#<id> / group#<groupId> records
    members: int = 0  # g#<groupId> / member#<profileId> records
    identifiers_by_type: dict[str, int] = field(default_factory=dict)
    profile_bytes: list[int] = field(default_factory=list)  # size of each live profile item
    # Items of the identity table whose size in moto differs from the meter's shadow
    # (which applies every update expression itself): should be 0.
    shadow_mismatches: int = 0

    def per_1000(self, count: int, events: int) -> float:
        return count * 1000 / max(events, 1)

    def since(self, before: IdentityOutcome) -> IdentityOutcome:
        """What changed after ``before`` (counts; the item sizes are the latest)."""
        counts = {
            name: getattr(self, name) - getattr(before, name)
            for name in (
                "profiles",
                "live",
                "merged",
                "identifiers",
                "accounts",
                "merge_log",
                "blocked",
                "account_links",
                "members",
                "shadow_mismatches",
            )
        }
        by_type = {t: n - before.identifiers_by_type.get(t, 0) for t, n in self.identifiers_by_type.items()}
        return IdentityOutcome(**counts, identifiers_by_type=by_type, profile_bytes=self.profile_bytes)


def identity_outcome(meter: AwsMeter) -> IdentityOutcome:
    """Count profiles, merges and identifiers in moto's identity table, and the records of
    the events table; check the meter's idea of every identity item's size against moto's."""
    from bench.aws_meter import item_size

    outcome = IdentityOutcome()
    by_type: dict[str, int] = defaultdict(int)
    shadow = {i["pk"]["S"]: item_size(i) for i in meter.dynamodb.stored_items(resources.IDENTITY_TABLE.local_name)}
    for item in scan_items(resources.IDENTITY_TABLE.local_name):
        pk = item["pk"]["S"]
        outcome.shadow_mismatches += shadow.get(pk) != item_size(item)
        if pk.startswith("prof#"):
            outcome.profiles += 1
            if item.get("status", {}).get("S") == "merged":
                outcome.merged += 1
            else:
                outcome.live += 1
                outcome.profile_bytes.append(item_size(item))
        elif pk.startswith("ident#"):
            outcome.identifiers += 1
            by_type[pk.removeprefix("ident#").split(":", 1)[0]] += 1
            if item.get("solo", {}).get("BOOL"):  # a visitor known by this anonymous id only
                outcome.profiles += 1
                outcome.live += 1
                outcome.profile_bytes.append(item_size(item))
        elif pk.startswith("acct#"):
            outcome.accounts += 1
    outcome.identifiers_by_type = dict(sorted(by_type.items()))
    # The events table's records as the meter saw them written (scanning moto's copy of a
    # table of one item per event would take minutes, see history_count).
    records = meter.dynamodb.stored_items(resources.EVENTS_TABLE.local_name)
    for item in records:
        if not item["pk"]["S"].startswith(("p#", "g#")):
            continue
        sk = item["sk"]["S"]
        if sk.startswith("merge#"):
            outcome.merge_log += 1
        elif sk.startswith("blocked#"):
            outcome.blocked += 1
        elif sk.startswith("group#"):
            outcome.account_links += 1
        elif sk.startswith("member#"):
            outcome.members += 1
    # A profile that lived in its anonymous id's item (its home) and was merged away leaves
    # no prof# item, only its merge log record (one per merged profile): count those.
    homes_merged = max(0, outcome.merge_log - outcome.merged)
    outcome.merged += homes_merged
    outcome.profiles += homes_merged
    return outcome


def collect_requests(harness: Harness, requests: list[SdkRequest], result: RunResult) -> None:
    """Every request through the collector, checking each is fully accepted."""
    http_event = integration_fixtures().http_event

    for request in requests:
        event = http_event("/v1/batch", request.body, request.headers)
        response, invocation = harness.call(COLLECTOR, event, request.events)
        if response["statusCode"] != 200:
            raise AssertionError(f"collector answered {response['statusCode']}: {response['body'][:500]}")
        body = json.loads(response["body"])
        if body.get("accepted") != request.events:
            raise AssertionError(f"collector accepted {body.get('accepted')} of {request.events}: {body}")
        result.collector.append(invocation)


def consume_stream(harness: Harness, esm_batch: int, expected: int, result: RunResult) -> None:
    """The stream, oldest first, through the consumer in ESM batches; no record may fail."""
    _, records = stream_records()
    if len(records) != expected:
        raise AssertionError(f"{len(records)} records on the stream, expected {expected}")
    for start in range(0, len(records), esm_batch):
        batch = records[start : start + esm_batch]
        response, invocation = harness.call(CONSUMER, {"Records": batch}, len(batch))
        if response.get("batchItemFailures"):
            raise AssertionError(f"consumer reported failures: {response['batchItemFailures'][:5]}")
        result.consumer.append(invocation)


def run_pipeline(
    harness: Harness,
    moto: MotoServerProcess,
    requests: list[SdkRequest],
    esm_batch: int,
    window: int,
    progress: Callable[[str], None],
    warm: list[SdkRequest] | None = None,
) -> RunResult:
    """One pass over every request: collector, then stream, then consumer, in windows.

    moto starts empty, and only the stream is renewed between windows of about
    ``window`` events: moto's Kinesis PutRecords walks every record of the shard
    (``list(records.keys())[-1]`` per record, so its cost grows with the stream), and the
    real service's costs do not depend on how much it holds, so neither do ours. The
    tables keep everything for the whole run: the identity graph must remember the
    people it met. Each window checks that the events table holds one history item per
    event so far, and as many items in moto as the meter saw written. (moto's
    TransactWriteItems copies whole tables to roll back; the benchmark's moto server backs
    up only the items a transaction touches, see bench/moto_process.py, so transactions
    cost the same however full the tables are.)

    ``warm`` requests go through first, unmeasured (their counts are dropped, the meter
    keeps the items they wrote): the identity graph then already knows their people.
    """
    total = sum(r.events for r in requests)
    result = RunResult(total)
    per_window = max(1, window // max(1, requests[0].events))
    prepare_aws(moto, harness.meter)
    done = 0

    def through(batch: list[SdkRequest], into: RunResult, label: str) -> None:
        nonlocal done
        for first in range(0, len(batch), per_window):
            chunk = batch[first : first + per_window]
            events = sum(r.events for r in chunk)
            if done:
                renew_stream()
            collect_requests(harness, chunk, into)
            consume_stream(harness, esm_batch, events, into)
            done += events
            stored = history_count(harness.meter)
            if stored != done:
                raise AssertionError(f"events table holds {stored} history items, expected {done}")
            seen = sum(1 for _ in harness.meter.dynamodb.stored_items(resources.EVENTS_TABLE.local_name))
            if item_count(resources.EVENTS_TABLE.local_name) != seen:
                raise AssertionError(f"moto's events table does not hold the {seen} items the meter saw written")
            progress(f"  {label}: {done:,} events through collector and consumer")

    before = IdentityOutcome()
    if warm:
        through(warm, RunResult(sum(r.events for r in warm)), "warm-up (not measured)")
        harness.meter.clear_tallies()
        before = identity_outcome(harness.meter)
    started, warm_events = time.monotonic(), done
    through(requests, result, f"measured {total:,}")
    result.stored = done - warm_events
    if result.stored != total:
        raise AssertionError(f"{result.stored} events stored, expected {total}")
    result.wall_s = time.monotonic() - started
    result.identity = identity_outcome(harness.meter).since(before)
    return result


# --- statistics and report --------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def per_event_ms(invocations: list[Invocation]) -> list[float]:
    return [i.cpu_s * 1000 / i.events for i in invocations]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def price_label(line: CostLine) -> str:
    if line.unit in ("requests", "WRU", "RRU"):
        return f"${line.unit_price * MILLION:g} per M {line.unit}"
    return f"${line.unit_price:.10f}".rstrip("0") + f" per {line.unit}"


@dataclass
class DurationModel:
    name: str
    billed_ms: Callable[[Invocation, int], float]


def duration_models() -> list[DurationModel]:
    return [
        DurationModel("lower bound: duration = CPU time measured here", lambda i, mb: math.ceil(i.cpu_s * 1000)),
        DurationModel(
            f"CPU share: CPU time / ({'{mb}'} MB / {LAMBDA_MB_PER_VCPU} MB per vCPU)",
            lambda i, mb: math.ceil(i.cpu_s * 1000 / cpu_share(mb)),
        ),
        DurationModel(
            f"estimate: CPU share + {ASSUMED_AWS_CALL_LATENCY_MS:g} ms per AWS call (assumed; calls from "
            "several threads overlap)",
            lambda i, mb: math.ceil(i.cpu_s * 1000 / cpu_share(mb) + ASSUMED_AWS_CALL_LATENCY_MS * i.sequential_calls),
        ),
    ]


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    sizes: list[int],
    runs: list[RunResult],
    harness: Harness,
    init_cpu: dict[str, float],
    first_call: dict[str, Invocation],
    out: Callable[[str], None],
) -> dict[str, Any]:
    meter = harness.meter
    n_total = sum(r.events for r in runs)
    memory = {
        COLLECTOR: resources.COLLECTOR_FUNCTION.memory_mb,
        CONSUMER: resources.STREAM_CONSUMER_FUNCTION.memory_mb,
    }
    esm_batch = args.esm_batch_size
    invocations = {
        COLLECTOR: [i for r in runs for i in r.collector],
        CONSUMER: [i for r in runs for i in r.consumer],
    }
    summary: dict[str, Any] = {
        "machine": info,
        "events_per_run": args.events,
        "runs": len(runs),
        "batch_size": args.batch_size,
        "esm_batch_size": esm_batch,
        "mean_event_bytes": statistics.mean(sizes),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }

    out("\n## Setup")
    out(f"- machine: {info['nproc']} cores, {info['cpu']}; Python {info['python']} ({info['platform']})")
    out(f"- product code: {info['product']}")
    out(
        f"- speed check (CPU ms of a fixed JSON workload, best of 3; lower is faster): {info['speed_check_ms']} "
        f"at start, {speed_check():.1f} at end"
    )
    other = info.get("other_work_cpus")
    out(
        "- other work on the machine during the runs: "
        + (f"{other:.2f} CPUs on average" if isinstance(other, float) else "unknown (no /proc)")
        + " (all CPUs' busy time less ours and moto's, /proc/stat; more than ~0.1 means the figures "
        f"are inflated); load average at start {info['load_average']}, at end "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
        + " (the benchmark and moto alternate and count for about 1)"
    )
    out(f"- events: {args.events:,} per run x {len(runs)} run(s)")
    for line in info["traffic"]:
        out(f"- {line}")
    out(
        f"- event size as sent by the SDK: mean {statistics.mean(sizes):.0f} B, median "
        f"{statistics.median(sizes):.0f} B, min {min(sizes)} B, max {max(sizes)} B"
    )
    out(
        f"- collector: {args.batch_size} events per POST /v1/batch (analytics-python flush), "
        f"{memory[COLLECTOR]} MB; consumer: ESM batch {esm_batch}, {memory[CONSUMER]} MB"
    )
    tracing = "on, every invocation sampled" if args.tracing else "off (POWERTOOLS_TRACE_DISABLED)"
    out(f"- moto server in a separate process; X-Ray tracing {tracing}; LOG_LEVEL=INFO")

    out("\n## CPU per event (time.process_time around handler calls, warm)")
    rows = []
    for name, target in ((COLLECTOR, TARGET_COLLECTOR_CPU_MS), (CONSUMER, TARGET_CONSUMER_CPU_MS)):
        per_run = [r.cpu_ms_per_event(name) for r in runs]
        per_call = per_event_ms(invocations[name])
        median_run = statistics.median(per_run)
        rows.append(
            [
                name,
                f"{median_run:.3f}",
                ", ".join(f"{v:.3f}" for v in per_run),
                f"{statistics.median(per_call):.3f}",
                f"{percentile(per_call, 95):.3f}",
                f"{statistics.median([i.cpu_s * 1000 for i in invocations[name]]):.1f}",
                f"<= {target}",
                "met" if median_run <= target else "MISSED",
            ]
        )
        summary[f"{name}_cpu_ms_per_event"] = {
            "median_of_runs": median_run,
            "runs": per_run,
            "per_invocation_median": statistics.median(per_call),
            "per_invocation_p95": percentile(per_call, 95),
        }
    out(
        markdown_table(
            [
                "handler",
                "CPU ms/event (median of runs)",
                "each run",
                "per invocation: median ms/event",
                "p95 ms/event",
                "median ms/invocation",
                "target",
                "",
            ],
            rows,
        )
    )
    for name in (COLLECTOR, CONSUMER):
        cpu = sum(i.cpu_s for i in invocations[name])
        own = sum(i.handler_thread_cpu_s for i in invocations[name])
        pooled = sum(i.pool_cpu_s for i in invocations[name])
        if pooled:
            out(
                f"{name.capitalize()} CPU by thread: handler thread {own * 1000 / n_total:.3f} ms/event, "
                f"work submitted to thread pools (time.thread_time) {pooled * 1000 / n_total:.3f} "
                f"ms/event, rest (pool bookkeeping) {(cpu - own - pooled) * 1000 / n_total:.3f} ms/event."
            )
            summary[f"{name}_cpu_ms_per_event"]["by_thread"] = {
                "handler_thread": own * 1000 / n_total,
                "pool_work": pooled * 1000 / n_total,
                "rest": (cpu - own - pooled) * 1000 / n_total,
            }
    out(
        f"Cold start (not in the figures above): import of the handler module (boto3 already loaded) "
        f"{init_cpu[COLLECTOR] * 1000:.0f} ms (collector), "
        f"{init_cpu[CONSUMER] * 1000:.0f} ms (consumer) CPU; "
        f"first invocation {first_call[COLLECTOR].cpu_s * 1000:.0f} ms and "
        f"{first_call[CONSUMER].cpu_s * 1000:.0f} ms CPU (clients created, lazy imports)."
    )

    out("\n## Lambda invocations per 1,000 events")
    per_1000 = {name: len(invocations[name]) * 1000 / n_total for name in invocations}
    total_per_1000 = sum(per_1000.values())
    out(
        markdown_table(
            ["function", "invocations / 1,000 events", "what one invocation is"],
            [
                [COLLECTOR, f"{per_1000[COLLECTOR]:.1f}", f"one HTTP request of {args.batch_size} events"],
                [
                    CONSUMER,
                    f"{per_1000[CONSUMER]:.1f}",
                    f"one ESM batch of {esm_batch} records (full batches)",
                ],
                [
                    "total",
                    f"{total_per_1000:.1f}",
                    f"target <= {TARGET_INVOCATIONS_PER_1000}: "
                    + ("met" if total_per_1000 <= TARGET_INVOCATIONS_PER_1000 else "MISSED"),
                ],
            ],
        )
    )
    summary["invocations_per_1000"] = {**per_1000, "total": total_per_1000}

    out("\n## AWS requests per event (botocore before-call hooks; HTTP attempts from before-send)")
    rows = []
    requests_summary: dict[str, Any] = {}
    for name in (COLLECTOR, CONSUMER):
        calls = meter.calls_of(name)
        attempts = meter.attempts_of(name)
        for (service, operation), count in calls.items():
            rows.append(
                [
                    name,
                    service,
                    operation,
                    f"{count / n_total:.4f}",
                    f"{count * 1000 / n_total:.2f}",
                    str(attempts.get((service, operation), 0) - count),
                ]
            )
            requests_summary[f"{name}.{service}.{operation}"] = count / n_total
    out(
        markdown_table(
            ["handler", "service", "operation", "requests / event", "per 1,000 events", "retried attempts"],
            rows,
        )
    )
    summary["aws_requests_per_event"] = requests_summary

    out("\n## DynamoDB request units per event (computed by DynamoDB's rules, not moto's ConsumedCapacity)")
    rows = []
    write_units_per_event: dict[str, float] = defaultdict(float)
    read_units_per_event: dict[str, float] = defaultdict(float)
    for kind, tallies, bucket in (
        ("write", meter.dynamodb.writes, write_units_per_event),
        ("read", meter.dynamodb.reads, read_units_per_event),
    ):
        for (phase, table, operation), tally in sorted(tallies.items()):
            if phase not in (COLLECTOR, CONSUMER):
                continue
            rows.append(
                [
                    phase,
                    table,
                    operation,
                    kind,
                    f"{tally.items / n_total:.3f}",
                    f"{tally.bytes / max(tally.items, 1):.0f}",
                    str(tally.refused),
                    f"{tally.units / n_total:.3f}",
                ]
            )
            bucket[f"{phase}.{table}.{operation}"] += tally.units / n_total
    out(
        markdown_table(
            [
                "handler",
                "table",
                "operation",
                "units",
                "items / event",
                "mean item bytes",
                "refused (billed) ¹",
                "units / event",
            ],
            rows,
        )
    )
    out(
        "¹ items of calls that failed (a condition that failed, e.g. a graph item changed by another consumer, or a "
        "cancelled transaction): billed like a write, change nothing."
    )
    if meter.dynamodb.unsupported:
        out(f"Approximated (operations not modelled exactly): {dict(meter.dynamodb.unsupported)}")
    summary["dynamodb_write_units_per_event"] = dict(write_units_per_event)
    summary["dynamodb_read_units_per_event"] = dict(read_units_per_event)
    wcu = sum(write_units_per_event.values())
    rcu = sum(read_units_per_event.values())
    out(
        f"Total: {wcu:.3f} write units and {rcu:.3f} read units per event. Assumption: a put over an item "
        "the benchmark has not seen written is costed on the new item (tables start empty each run)."
    )
    summary["dynamodb_units_per_event"] = request_units_summary(
        meter, n_total, wcu, rcu, out, targets=args.traffic == "identity"
    )
    identity_summary = identity_report(runs, out)
    if identity_summary:
        summary["identity"] = identity_summary

    kinesis = meter.kinesis[COLLECTOR]
    s3 = meter.s3[CONSUMER]
    out("\n## Kinesis and S3 per event")
    out(
        markdown_table(
            ["quantity", "per event"],
            [
                ["Kinesis records", f"{kinesis.records / n_total:.3f}"],
                ["record bytes (data + partition key)", f"{kinesis.bytes / max(kinesis.records, 1):.0f}"],
                ["PUT payload units (25 KB, provisioned)", f"{kinesis.put_payload_units / n_total:.3f}"],
                [
                    "on-demand ingest bytes (1 KB rounding per record)",
                    f"{kinesis.on_demand_bytes / n_total:.0f}",
                ],
                ["S3 PUT requests", f"{s3.puts / n_total:.4f}"],
                ["S3 archive bytes (gzip JSONL)", f"{s3.put_bytes / n_total:.0f}"],
            ],
        )
    )

    out("\n## Logs (stdout captured during handler calls: Powertools JSON logs + EMF metrics)")
    logs_per_invocation = {name: statistics.mean(i.log_bytes for i in invocations[name]) for name in invocations}
    for name in (COLLECTOR, CONSUMER):
        out(
            f"- {name}: {logs_per_invocation[name]:.0f} B per invocation measured + "
            f"{ASSUMED_PLATFORM_LOG_BYTES} B platform lines (assumed: START/END/REPORT/XRAY); "
            f"metrics: {', '.join(sorted(harness.metric_names[name])) or 'none'}"
        )

    # --- cost ---------------------------------------------------------------------------
    models = duration_models()
    lambda_gbs: dict[tuple[str, str], float] = {}
    for model in models:
        for name in (COLLECTOR, CONSUMER):
            billed = sum(model.billed_ms(i, memory[name]) for i in invocations[name])
            lambda_gbs[(model.name, name)] = gb_seconds(billed, memory[name]) / n_total * MILLION
    estimate, lower = models[2].name, models[0].name
    per_million = MILLION / n_total
    log_bytes = sum(i.log_bytes + ASSUMED_PLATFORM_LOG_BYTES for name in invocations for i in invocations[name])
    lines = [
        CostLine(
            "API Gateway HTTP API",
            "requests",
            len(invocations[COLLECTOR]) * per_million,
            "requests",
            PRICES.http_api_request,
        ),
        CostLine(
            "Lambda",
            "collector requests",
            len(invocations[COLLECTOR]) * per_million,
            "requests",
            PRICES.lambda_request,
        ),
        CostLine(
            "Lambda",
            "consumer requests",
            len(invocations[CONSUMER]) * per_million,
            "requests",
            PRICES.lambda_request,
        ),
        CostLine(
            "Lambda",
            f"collector duration, arm64 {memory[COLLECTOR]} MB (estimate)",
            lambda_gbs[(estimate, COLLECTOR)],
            "GB-s",
            PRICES.lambda_gb_second_arm64,
        ),
        CostLine(
            "Lambda",
            f"consumer duration, arm64 {memory[CONSUMER]} MB (estimate)",
            lambda_gbs[(estimate, CONSUMER)],
            "GB-s",
            PRICES.lambda_gb_second_arm64,
        ),
        CostLine(
            "Kinesis on-demand",
            "ingest (1 KB rounding per record)",
            kinesis.on_demand_bytes * per_million / GB,
            "GB",
            PRICES.kinesis_on_demand_ingest_gb,
        ),
        CostLine(
            "Kinesis on-demand",
            "retrieval by the consumer",
            kinesis.bytes * per_million / GB,
            "GB",
            PRICES.kinesis_on_demand_retrieval_gb,
        ),
    ]
    for key, units in sorted(write_units_per_event.items()):
        lines.append(
            CostLine(
                "DynamoDB",
                f"write units {key.split('.', 1)[1]}",
                units * MILLION,
                "WRU",
                PRICES.dynamodb_write_unit,
            )
        )
    for key, units in sorted(read_units_per_event.items()):
        lines.append(
            CostLine(
                "DynamoDB",
                f"read units {key.split('.', 1)[1]}",
                units * MILLION,
                "RRU",
                PRICES.dynamodb_read_unit,
            )
        )
    lines += [
        CostLine("S3", "PUT (archive objects)", s3.puts * per_million, "requests", PRICES.s3_put),
        CostLine("CloudWatch Logs", "ingestion", log_bytes * per_million / GB, "GB", PRICES.logs_ingest_gb),
    ]
    provisioned_units = kinesis.put_payload_units * per_million
    out("\n## Cost per million events (variable; us-east-1 list prices of BENCHMARKING.md)")
    out(
        f"Traffic: mix above, mean event {statistics.mean(sizes):.0f} B, {args.batch_size} events per "
        f"collector request, ESM batch {esm_batch}, {memory[COLLECTOR]} MB / {memory[CONSUMER]} MB arm64, "
        "Kinesis on-demand, full batches."
    )
    rows = [
        [
            line.service,
            line.item,
            f"{line.quantity_per_million:,.{0 if line.unit != 'GB' else 3}f} {line.unit}",
            price_label(line),
            f"${line.cost:.4f}",
        ]
        for line in lines
    ]
    total = sum(line.cost for line in lines)
    rows.append(["**total**", "Kinesis on-demand, Lambda estimate", "", "", f"**${total:.2f}**"])
    out(markdown_table(["service", "item", "quantity / M events", "price", "$ / M events"], rows))
    by_service: dict[str, float] = defaultdict(float)
    for line in lines:
        by_service[line.service] += line.cost
    out("\nBy service: " + ", ".join(f"{s} ${c:.3f}" for s, c in sorted(by_service.items(), key=lambda x: -x[1])))

    lambda_lower = sum(lambda_gbs[(lower, n)] for n in (COLLECTOR, CONSUMER)) * PRICES.lambda_gb_second_arm64
    lambda_est = sum(lambda_gbs[(estimate, n)] for n in (COLLECTOR, CONSUMER)) * PRICES.lambda_gb_second_arm64
    out("\nLambda duration under each model (GB-s per million events; $ at arm64 / x86_64):")
    rows = []
    for model in models:
        gbs = {n: lambda_gbs[(model.name, n)] for n in (COLLECTOR, CONSUMER)}
        both = sum(gbs.values())
        rows.append(
            [
                model.name.replace("{mb}", str(memory[COLLECTOR])),
                f"{gbs[COLLECTOR]:,.1f}",
                f"{gbs[CONSUMER]:,.1f}",
                f"${both * PRICES.lambda_gb_second_arm64:.3f}",
                f"${both * PRICES.lambda_gb_second_x86_64:.3f}",
            ]
        )
    out(markdown_table(["duration model", "collector GB-s", "consumer GB-s", "arm64", "x86_64"], rows))
    kinesis_od = sum(line.cost for line in lines if line.service == "Kinesis on-demand")
    kinesis_prov = provisioned_units * PRICES.kinesis_put_payload_unit
    out(
        f"\nKinesis provisioned instead of on-demand: {provisioned_units:,.0f} PUT payload units = "
        f"${kinesis_prov:.4f} per million events (retrieval included) plus shard-hours; "
        f"total would be ${total - kinesis_od + kinesis_prov:.2f}. With the Lambda lower bound instead of "
        f"the estimate: ${total - lambda_est + lambda_lower:.2f}."
    )
    metric_count = len(harness.metric_names[COLLECTOR] | harness.metric_names[CONSUMER])
    archive_gb_month = s3.put_bytes * per_million / GB
    out(
        "\nFixed monthly costs (not per event): Kinesis on-demand stream "
        f"${PRICES.kinesis_on_demand_stream_hour * HOURS_PER_MONTH:.2f}/month "
        f"(or ${PRICES.kinesis_shard_hour * HOURS_PER_MONTH:.2f} per provisioned shard-month); "
        f"{metric_count} custom metrics (EMF, dimension service) "
        f"${metric_count * PRICES.custom_metric_month:.2f}/month. Storage grows with retention: "
        f"S3 archive {archive_gb_month:.3f} GB per million events = "
        f"${archive_gb_month * PRICES.s3_storage_gb_month:.4f} per month kept; DynamoDB storage not priced."
    )
    fixed = PRICES.kinesis_on_demand_stream_hour * HOURS_PER_MONTH + metric_count * PRICES.custom_metric_month
    out(
        "\nMonthly total = fixed + variable: "
        + ", ".join(
            f"{m:g} M events ${fixed + m * total:,.2f} (${(fixed + m * total) / m:.2f}/M)" for m in (1, 10, 100)
        )
    )
    out(
        "Comparison: Twilio Segment Team ~$48 per million events at the cap; RudderStack Cloud Growth from "
        "$265/month for 1 million events."
    )
    summary["cost_per_million"] = {f"{line.service}: {line.item}": line.cost for line in lines}
    summary["cost_per_million_total"] = total
    summary["cost_by_service"] = dict(by_service)
    summary["fixed_monthly"] = fixed
    return summary


def request_units_summary(
    meter: AwsMeter, n_total: int, wcu: float, rcu: float, out: Callable[[str], None], targets: bool
) -> Any:
    """Request units per event by table, and by table, operation and kind of item; the targets."""
    by_table: dict[tuple[str, str], float] = defaultdict(float)
    for kind, tallies in (("write", meter.dynamodb.writes), ("read", meter.dynamodb.reads)):
        for (phase, table, _), tally in tallies.items():
            if phase in (COLLECTOR, CONSUMER):
                by_table[(kind, table)] += tally.units / n_total
    out("\nBy table (units per event):")
    out(
        markdown_table(
            ["table", "write units / event", "read units / event"],
            [
                [table, f"{by_table.get(('write', table), 0):.3f}", f"{by_table.get(('read', table), 0):.3f}"]
                for table in sorted({t for _, t in by_table})
            ],
        )
    )
    out("\nBy kind of item (key prefix: ident#, prof#, acct# identity graph; u#/a# history; p#merge# merge log, ...):")
    rows = []
    by_kind: dict[str, float] = {}
    for kind, kind_tallies in (("write", meter.dynamodb.write_kinds), ("read", meter.dynamodb.read_kinds)):
        for (phase, table, operation, item), tally in sorted(kind_tallies.items(), key=lambda kv: -kv[1].units):
            if phase not in (COLLECTOR, CONSUMER) or not tally.units:
                continue
            rows.append(
                [
                    kind,
                    table,
                    operation,
                    item,
                    f"{tally.items * 1000 / n_total:.1f}",
                    f"{tally.bytes / max(tally.items, 1):.0f}",
                    str(tally.refused),
                    f"{tally.units / n_total:.3f}",
                ]
            )
            by_kind[f"{kind}.{table}.{operation}.{item}"] = tally.units / n_total
    out(
        markdown_table(
            ["units", "table", "operation", "item", "items / 1,000 events", "mean bytes", "refused", "units / event"],
            rows,
        )
    )
    verdict = {
        "write": "met" if wcu <= TARGET_WRITE_UNITS_PER_EVENT else "MISSED",
        "read": "met" if rcu <= TARGET_READ_UNITS_PER_EVENT else "MISSED",
    }
    if targets:
        out(
            f"\nTargets of identity resolution (issue 3, reference identity mix): <= {TARGET_WRITE_UNITS_PER_EVENT} "
            f"write units per event: {wcu:.3f}, {verdict['write']}; <= {TARGET_READ_UNITS_PER_EVENT} read units per "
            f"event: {rcu:.3f}, {verdict['read']}."
        )
    return {
        "write_total": wcu,
        "read_total": rcu,
        "by_table": {f"{k}.{t}": v for (k, t), v in by_table.items()},
        "by_kind": by_kind,
        "targets": verdict,
    }


def identity_report(runs: list[RunResult], out: Callable[[str], None]) -> dict[str, Any] | None:
    """Merges, profiles and records per 1,000 events, from the tables after the last run."""
    last = runs[-1]
    outcome = last.identity
    if outcome is None:
        return None
    n = last.events

    def per_1000(count: int) -> str:
        return f"{outcome.per_1000(count, n):.2f}"

    out(
        "\n## Identity resolution (after the last run: the identity table read from moto, the events table's "
        "records as the meter saw them written)"
    )
    profile_bytes = outcome.profile_bytes or [0]
    out(
        markdown_table(
            ["quantity", "count", "per 1,000 events"],
            [
                ["profiles created (prof# items and home identifier items)", f"{outcome.profiles:,}",
                 per_1000(outcome.profiles)],
                ["merges (merged prof# items and merged-away home profiles)", f"{outcome.merged:,}",
                 per_1000(outcome.merged)],
                ["merge log records (p#<id> / merge#<id>)", f"{outcome.merge_log:,}", per_1000(outcome.merge_log)],
                ["live profiles", f"{outcome.live:,}", per_1000(outcome.live)],
                ["identifiers (ident# items)", f"{outcome.identifiers:,}", per_1000(outcome.identifiers)],
                ["blocked merges (p#<id> / blocked#)", f"{outcome.blocked:,}", per_1000(outcome.blocked)],
                ["accounts (acct# items)", f"{outcome.accounts:,}", per_1000(outcome.accounts)],
                ["account links (group#) / members (g#)", f"{outcome.account_links:,} / {outcome.members:,}", ""],
            ],
        )
    )
    out(
        "Identifiers by type: " + ", ".join(f"{k} {v:,}" for k, v in outcome.identifiers_by_type.items()) + "; live "
        f"profile items: mean {statistics.mean(profile_bytes):,.0f} B, max {max(profile_bytes):,} B (the size every "
        "state update is billed on)."
    )
    if outcome.merge_log != outcome.merged:
        out(f"NOTE: {outcome.merged} merged profiles but {outcome.merge_log} merge log records.")
    out(
        f"Meter check: {outcome.shadow_mismatches} identity items whose size in moto differs from the size the "
        "meter computed from the requests (updates applied by the meter itself); 0 expected."
    )
    return {
        "profiles_per_1000": outcome.per_1000(outcome.profiles, n),
        "merges_per_1000": outcome.per_1000(outcome.merged, n),
        "live_profiles": outcome.live,
        "identifiers": outcome.identifiers,
        "identifiers_by_type": outcome.identifiers_by_type,
        "blocked": outcome.blocked,
        "accounts": outcome.accounts,
        "merge_log": outcome.merge_log,
        "mean_profile_bytes": statistics.mean(profile_bytes),
    }


# --- profile -----------------------------------------------------------------------------

_CATEGORIES = (
    ("/shared/cdp/", "cdp (our code)"),
    ("/functions/", "cdp handlers"),
    ("pydantic", "pydantic"),
    ("/botocore/", "botocore"),
    ("/boto3/", "boto3"),
    ("/urllib3/", "HTTP client (urllib3, http.client, socket)"),
    ("/http/client.py", "HTTP client (urllib3, http.client, socket)"),
    ("socket", "HTTP client (urllib3, http.client, socket)"),
    ("aws_lambda_powertools", "Powertools"),
    ("/json/", "json"),
    ("_json", "json"),
    ("zlib", "gzip/zlib"),
    ("gzip", "gzip/zlib"),
    ("hashlib", "hashlib"),
    ("_hashlib", "hashlib"),
    ("binascii", "base64"),
    ("base64", "base64"),
    ("/logging/", "logging"),
    ("datetime", "datetime"),
    ("uuid", "uuid"),
    ("/email/", "HTTP client (urllib3, http.client, socket)"),
)


def category(path: str, function: str) -> str:
    where = f"{path} {function}"
    for needle, name in _CATEGORIES:
        if needle in where:
            return name
    return "other (stdlib, builtins)"


def profile_report(
    name: str, stats: pstats.Stats, events: int, out: Callable[[str], None], pool_threads: int = 0, top: int = 30
) -> dict[str, float]:
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values())
    by_category: dict[str, float] = defaultdict(float)
    for (path, _, function), (_, _, tt, _, _) in raw.items():
        by_category[category(path, function)] += tt
    threads = f"; handler thread + {pool_threads} pool threads" if pool_threads else ""
    out(f"\n### {name}: CPU by package (self time; profiled, so slower than the figures above{threads})")
    out(
        markdown_table(
            ["package", "share"],
            [[c, f"{t / total:.1%}"] for c, t in sorted(by_category.items(), key=lambda x: -x[1])],
        )
    )

    def label(key: tuple[str, int, str]) -> str:
        path, line, function = key
        for marker in ("site-packages/", "/shared/", "/functions/", "/lib/python3.11/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return f"{function} ({path}:{line})" if path != "~" else function

    out(f"\n### {name}: top functions by cumulative time (share of the handler's CPU)")
    ranked = sorted(raw.items(), key=lambda kv: -kv[1][3])
    rows = [[label(k), f"{v[3] / total:.1%}", f"{v[2] / total:.1%}", str(v[1])] for k, v in ranked[:top]]
    out(markdown_table(["function", "cumulative", "self", "calls"], rows))
    out(f"\n### {name}: top functions by self time")
    ranked = sorted(raw.items(), key=lambda kv: -kv[1][2])
    rows = [[label(k), f"{v[2] / total:.1%}", f"{v[2] * 1000 / events:.4f}", str(v[1])] for k, v in ranked[:top]]
    out(markdown_table(["function", "self", "profiled ms / event", "calls"], rows))
    return {c: t / total for c, t in by_category.items()}


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=50_000,
        help="events per run (default 50000: about 4 minutes on 2 cores; per-event figures do not depend on "
        "it; the published figures use 100000)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=SDK_BATCH_SIZE,
        help="events per collector request (analytics-python flushes up to 100)",
    )
    parser.add_argument(
        "--esm-batch-size",
        type=int,
        default=resources.STREAM_CONSUMER_ESM.batch_size,
        help="records per consumer invocation (default: STREAM_CONSUMER_ESM.batch_size, "
        f"{resources.STREAM_CONSUMER_ESM.batch_size})",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs, each on an emptied moto; CPU figures are the median of runs",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the runs, profile both handlers (cProfile, CPU clock) and print where the time goes",
    )
    parser.add_argument(
        "--profile-events", type=int, default=20_000, help="events for the profiling pass (default 20000)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=10_000,
        help="events between two renewals of the stream (moto's Kinesis slows down as a stream grows); "
        "no figure depends on it",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="run Powertools' Tracer as with active X-Ray tracing, every invocation sampled",
    )
    parser.add_argument(
        "--profile-out", metavar="DIR", help="also save the profiles as DIR/<handler>.pstats (for snakeviz etc.)"
    )
    parser.add_argument(
        "--traffic",
        choices=("mixed", "identity"),
        default="mixed",
        help="mixed: events of random people in the proportions of bench/segment_traffic.py (default); identity: "
        "people with devices and sessions over time, the reference mix of bench/identity_traffic.py",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=IdentityMix().rate_per_s,
        help=f"identity traffic: events per second reaching the collector (default {IdentityMix().rate_per_s:g}); "
        "sets the run's time window and how people's events interleave",
    )
    parser.add_argument(
        "--warm-events",
        type=int,
        default=0,
        help="identity traffic: run this many events of the same traffic first, unmeasured, so that the identity "
        "graph knows the people who come back (default 0: the run starts on an empty graph)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--definitions", type=Path, metavar="DIR",
                        help="load these audience and computed trait definitions first (e.g. examples/audiences): "
                             "the consumer then folds events into profiles' aggregate states")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.events, args.batch_size, args.esm_batch_size, args.runs) < 1 or args.rate <= 0:
        parser.error("--events, --batch-size, --esm-batch-size, --runs and --rate must be positive")
    if args.warm_events and (args.traffic != "identity" or args.warm_events < 0):
        parser.error("--warm-events is for --traffic identity, and not negative")
    return args


def traffic_generator(args: argparse.Namespace) -> SegmentTrafficGenerator:
    if args.traffic == "identity":
        return IdentityTrafficGenerator(WRITE_KEY, seed=args.seed, mix=IdentityMix(rate_per_s=args.rate))
    return SegmentTrafficGenerator(WRITE_KEY, seed=args.seed)


def traffic_description(args: argparse.Namespace, generator: SegmentTrafficGenerator) -> list[str]:
    """The traffic's mix, as set and as generated, for the report."""
    if isinstance(generator, IdentityTrafficGenerator):
        warm = (
            f"; the first {args.warm_events:,} events of the window went through first, unmeasured (the graph knows "
            "their people); the figures are of the next " + f"{args.events:,}"
            if args.warm_events
            else "; the run starts on an empty identity graph"
        )
        return [
            "identity traffic (bench/identity_traffic.py), seed " + str(args.seed) + warm,
            *("mix: " + line for line in generator.mix.describe()),
            *("generated: " + line for line in generator.stats.describe()),
        ]
    return [
        "mixed traffic (bench/segment_traffic.py), seed "
        + str(args.seed)
        + ": "
        + ", ".join(f"{k} {v:.0%}" for k, v in TRAFFIC_MIX.items())
        + "; 5,000 people, 65 % identified"
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    DEFINITIONS["dir"] = args.definitions
    out = print
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    info = machine()
    print(f"# Pipeline benchmark, {args.traffic} traffic ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(f"command: python -m bench.pipeline {' '.join(sys.argv[1:] if argv is None else argv)}")
    with MotoServerProcess() as moto, contextlib.ExitStack() as stack:
        point_at(moto.endpoint, args.tracing)
        progress(f"moto server on {moto.endpoint} (pid separate from ours: {os.getpid()})")
        meter = AwsMeter(resources.TABLES)
        harness, init_cpu = load_harness(meter, moto.endpoint, args.tracing)
        harness.pool = pool = PoolTap(harness)
        stack.enter_context(pool.installed())

        generator = traffic_generator(args)
        events = generator.events(args.warm_events + args.events)
        warm_requests = list(generator.requests(events[: args.warm_events], args.batch_size))
        events = events[args.warm_events :]
        sizes = [event_size(e) for e in events]
        requests = list(generator.requests(events, args.batch_size))
        del events
        info["traffic"] = traffic_description(args, generator)
        if args.definitions:
            note = f"the definitions of {args.definitions} loaded (aggregates folded on profiles)"
            info["traffic"] = [*info["traffic"], note] if isinstance(info["traffic"], list) \
                else f"{info['traffic']}; {note}"
        warmup_generator = SegmentTrafficGenerator(WRITE_KEY, seed=args.seed + 1)
        warmup = list(warmup_generator.requests(warmup_generator.events(2 * args.batch_size), args.batch_size))
        progress(f"{args.events:,} events generated, mean {statistics.mean(sizes):.0f} B, {len(requests):,} requests")
        # Everything made so far lives for the whole run: keep it out of the GC's way,
        # so collections inside handler calls scan what a real function would have.
        gc.collect()
        gc.freeze()

        # Warm-up: the first calls create clients and finish lazy imports (cold start).
        prepare_aws(moto, meter)
        warm = RunResult(sum(r.events for r in warmup))
        collect_requests(harness, warmup, warm)
        consume_stream(harness, args.esm_batch_size, warm.events, warm)
        first_call = {COLLECTOR: warm.collector[0], CONSUMER: warm.consumer[0]}
        meter.clear_tallies()

        runs: list[RunResult] = []
        other_work = OtherWork(moto.pid)
        for run in range(args.runs):
            progress(f"run {run + 1}/{args.runs}")
            result = run_pipeline(harness, moto, requests, args.esm_batch_size, args.window, progress, warm_requests)
            runs.append(result)
            progress(
                f"run {run + 1}: collector {result.cpu_ms_per_event(COLLECTOR):.3f} ms/event, consumer "
                f"{result.cpu_ms_per_event(CONSUMER):.3f} ms/event CPU; {result.wall_s:.0f} s wall"
            )

        info["other_work_cpus"] = other_work.share_of_one_cpu()
        summary = report(args, info, sizes, runs, harness, init_cpu, first_call, out)

        if args.profile:
            out("\n## Profile (cProfile with each thread's CPU clock, handler calls and their pool threads only)")
            profiled = requests[: max(1, args.profile_events // args.batch_size)]
            n_profiled = sum(r.events for r in profiled)
            progress(f"profiling on {n_profiled:,} events")
            harness.profilers = {
                COLLECTOR: cProfile.Profile(time.thread_time),
                CONSUMER: cProfile.Profile(time.thread_time),
            }
            run_pipeline(harness, moto, profiled, args.esm_batch_size, args.window, progress)
            profilers, harness.profilers = harness.profilers, {}
            merged = {}
            for name, profiler in profilers.items():
                stats = pstats.Stats(profiler)
                for thread_profile in pool.profiles.get(name, []):
                    stats.add(thread_profile)
                merged[name] = stats
                if args.profile_out:
                    os.makedirs(args.profile_out, exist_ok=True)
                    stats.dump_stats(os.path.join(args.profile_out, f"{name}.pstats"))
            summary["profile"] = {
                name: profile_report(name, merged[name], n_profiled, out, len(pool.profiles.get(name, [])))
                for name in (COLLECTOR, CONSUMER)
            }
    summary["wall_s"] = time.monotonic() - started
    out(f"\nTotal wall time {summary['wall_s']:.0f} s.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
