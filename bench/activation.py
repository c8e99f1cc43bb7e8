"""Benchmark of activation (issue 5): the router, the destination functions, batch syncs and
the event-to-delivery latency of the local stack.

    .venv/bin/python -m bench.activation router                 # CPU, requests, units, $ per million
    .venv/bin/python -m bench.activation destination            # webhook, S3 export, Meta
    .venv/bin/python -m bench.activation sync --members 100000  # bench/batch_sync.py, per destination
    .venv/bin/python -m bench.activation latency --events 200   # EmbeddedStack, p50/p99
    .venv/bin/python -m bench.activation all --smoke            # every part, tiny (< 30 s)

**router**, **destination**: the real handlers (``functions/activation_router``,
``functions/destination``) on moto as a separate server process (bench/moto_process.py, via
bench/segmentation.py's ``FastMotoServer``), so ``time.process_time()`` around each handler
call holds our code and boto3's client-side work only. The destinations' far end (a webhook
receiver, a fake Graph API) is bench/activation_fakes.py, another process that answers 200
at once. AWS requests are counted by botocore hooks (bench/aws_meter.py); DynamoDB request
units are computed by DynamoDB's rules from item sizes, never taken from moto.

* Router, membership changes: stream records as DynamoDB Streams delivers them
  (``cdp.local.lambda_events.dynamodb_stream_event``, NEW_AND_OLD_IMAGES) of memberships
  items as ``cdp.aws.membership_store`` writes them (half entries: INSERT; half exits:
  MODIFY with the member's old image), 100 per invocation (``ACTIVATION_MEMBERSHIPS_ESM``).
* Router, trigger events: Kinesis records of the collector's format (docs/record-format.md,
  ``kind: event``), a normalised ``track "Pricing Viewed"`` of a known person, 100 per
  invocation (``ACTIVATION_EVENTS_ESM``), every destination with the trigger: without an
  audience condition (the profile is read for the message group) and with one (the
  profile and the person's memberships are read).
* 1, 3 and 10 webhook destinations list the audience / carry the trigger.
* Destination: SQS records as Lambda delivers them (``sqs_event``), carrying the router's
  real message bodies (``cdp.activation.router.route_change``): a webhook (FIFO, 10 per
  invocation, as the deployed mapping) to the receiver; the S3 export (standard queue,
  1,000 and 10,000 per invocation) to moto's S3; Meta Custom Audiences (standard queue,
  1,000 and 10,000) to the fake Graph API. Every invocation reads the batch's profiles
  (``BatchGetItem``), the batch APIs also the current memberships (consistent
  ``BatchGetItem``), and each writes the delivery log (``UpdateItem``).

Each measured phase starts after a warm-up invocation (the destination object, its secret,
the queue URLs and the router's configuration are built once per warm function; that first
invocation's CPU is printed apart). CPU figures are the median over ``--rounds`` rounds.

**sync**: bench/batch_sync.py (in process, moto in process as well: throughput, not CPU,
is the figure) with ``--destination s3`` (the real ``S3ExportDestination``, what the sync
function sends through) and ``--destination meta`` (the real
``MetaCustomAudiencesDestination`` to the fake Graph API), plus ``--s3-export`` (the
``ExportFileWriter`` multipart file).

**latency**: bench/activation_latency.py (the EmbeddedStack with a webhook destination and
a trigger destination, events through the HTTP API).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.aws_meter import AwsMeter
from bench.cost_model import GB, MILLION, PRICES, cpu_share, gb_seconds
from cdp import resources

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
AUDIENCE = "gold"
TRIGGER_EVENT = "Pricing Viewed"
WEBHOOK_SECRET_NAME = "cdp/bench/hooks"
META_SECRET_NAME = "cdp/bench/meta"
EXPORT_BUCKET = "cdp-bench-exports"
ASSUMED_AWS_CALL_LATENCY_MS = 10.0  # as bench/segmentation.py: a call's wait, billed as duration
ASSUMED_HTTP_LATENCY_MS = {"webhook": 50.0, "s3": 30.0, "meta": 500.0}  # a destination's answer time
SQS_CHUNK_BYTES = 64 * 1024
SQS_RECEIVE_MAX = 10  # ReceiveMessage / DeleteMessageBatch: at most 10 messages a request


# --- inputs (pure) ---------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def profile_id(n: int) -> str:
    return f"p{n:07d}"


def profile_items(n: int) -> list[dict[str, Any]]:
    """A person's identity-table items: the ``prof#`` item (traits, ids) and its ``user_id``
    identifier item, as the stream consumer writes them (bench/segmentation.py's shape)."""
    from cdp.identity.profile_state import ProfileState, TraitValue, state_to_json
    from cdp.segmentation.tallies import Tallies, tallies_to_json

    pid = profile_id(n)
    traits = {"email": f"person{n}@example.com", "first_name": "Ana", "last_name": f"Example{n}",
              "plan": "enterprise", "country": "US", "city": "Austin", "company_size": 40 + n % 500,
              "created_at": "2026-06-01T10:00:00Z"}
    state = ProfileState({k: TraitValue(v, "2026-06-01T10:00:00.000Z", f"m-t{n}") for k, v in traits.items()},
                         "2026-06-01T10:00:00.000Z", NOW.date().isoformat())
    return [{"pk": {"S": f"prof#{pid}"}, "status": {"S": "live"}, "version": {"N": "7"},
             "ids": {"SS": [f"ident#user_id:user-{n:07d}", f"ident#anonymous_id:anon-{n:07d}",
                            f"ident#email:person{n}@example.com"]},
             "state": {"S": state_to_json(state)}, "agg": {"S": tallies_to_json(Tallies())},
             "created_at": {"S": "2026-06-01T10:00:00.000Z"}, "updated_at": {"S": _iso(NOW)}},
            {"pk": {"S": f"ident#user_id:user-{n:07d}"}, "profile_id": {"S": pid},
             "created_at": {"S": "2026-06-01T10:00:00.000Z"}}]


def membership_item(n: int, member: bool, version: int, audience: str = AUDIENCE) -> dict[str, Any]:
    """A memberships-table item as ``MembershipStore._item`` writes it (DynamoDB JSON)."""
    pid = profile_id(n)
    item: dict[str, Any] = {
        "profile_id": {"S": pid}, "audience_id": {"S": audience}, "member": {"BOOL": member},
        "profile_version": {"N": str(version)}, "changed_version": {"N": str(version)},
        "updated_at": {"S": _iso(NOW)}, "entered_at": {"S": _iso(NOW - timedelta(days=3))}}
    if member:
        item["member_of"] = {"S": audience}
    else:
        item["exited_at"] = {"S": _iso(NOW)}
    return item


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    return {k: deserializer.deserialize(v) for k, v in item.items()}


def change_pairs(first: int, count: int) -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
    """(old, new) memberships items: even n an entry (new item), odd n an exit."""
    pairs: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
    for n in range(first, first + count):
        if n % 2 == 0:
            pairs.append((None, membership_item(n, True, 8)))
        else:
            pairs.append((membership_item(n, True, 5), membership_item(n, False, 8)))
    return pairs


def membership_stream_event(pairs: Sequence[tuple[dict[str, Any] | None, dict[str, Any]]],
                            sequence: int) -> dict[str, Any]:
    from cdp.local.lambda_events import DynamoDbChange, dynamodb_stream_arn, dynamodb_stream_event

    changes = [DynamoDbChange("MODIFY" if old else "INSERT",
                              {"profile_id": new["profile_id"]["S"], "audience_id": new["audience_id"]["S"]},
                              f"{sequence + k:021d}", NOW, _plain(new), _plain(old) if old else None)
               for k, (old, new) in enumerate(pairs)]
    arn = dynamodb_stream_arn(resources.MEMBERSHIPS_TABLE.local_name, "2026-12-01T00:00:00.000")
    return dynamodb_stream_event(changes, stream_arn=arn, view_type="NEW_AND_OLD_IMAGES")


def trigger_record(n: int, tag: str) -> dict[str, Any]:
    """The collector's record of a normalised ``track`` (docs/record-format.md)."""
    at = _iso(NOW)
    event = {"type": "track", "event": TRIGGER_EVENT, "userId": f"user-{n:07d}", "anonymousId": f"anon-{n:07d}",
             "properties": {"plan": "enterprise", "path": "/pricing", "referrer": "https://www.example.com/",
                            "seats": 25},
             "context": {"library": {"name": "analytics-python", "version": "2.3.3"}, "ip": "203.0.113.7",
                         "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0",
                         "locale": "en-US", "page": {"path": "/pricing", "url": "https://app.example.com/pricing"}},
             "messageId": f"bench-{tag}-{n:07d}", "timestamp": at, "originalTimestamp": at, "sentAt": at,
             "receivedAt": at}
    return {"v": 1, "kind": "event", "source_id": "src_bench", "event": event}


def kinesis_batch(records: Sequence[dict[str, Any]], sequence: int) -> tuple[dict[str, Any], int]:
    """The Kinesis event of these records, and the records' data bytes."""
    from cdp.local.lambda_events import KinesisRecord, kinesis_event, kinesis_stream_arn

    encoded = [json.dumps(r, separators=(",", ":")).encode() for r in records]
    shard = [KinesisRecord("shardId-000000000000", f"{sequence + k:056d}",
                           hashlib.sha256(str(r["event"]["userId"]).encode()).hexdigest()[:32], data,
                           NOW.timestamp()) for k, (r, data) in enumerate(zip(records, encoded, strict=True))]
    event = kinesis_event(shard, stream_arn=kinesis_stream_arn(resources.EVENT_STREAM.local_name),
                          invoke_identity_arn="arn:aws:iam::123456789012:role/router")
    return event, sum(len(d) for d in encoded)


def router_destinations(count: int, audience_condition: bool, url: str) -> list[Any]:
    from cdp.activation.destinations import parse_destinations

    trigger: dict[str, Any] = {"name": "pricing", "event": TRIGGER_EVENT,
                               "where": [{"path": "properties.plan", "op": "equals", "value": "enterprise"}]}
    if audience_condition:
        trigger["audience"] = AUDIENCE
    return parse_destinations([
        {"id": f"hook-{k:02d}", "name": f"Hook {k}", "type": "webhook", "audiences": [AUDIENCE],
         "triggers": [trigger], "field_mapping": {"email": "email", "plan": "plan"},
         "settings": {"url": f"{url}/hooks/{k}", "secret_name": WEBHOOK_SECRET_NAME}}
        for k in range(count)])


def delivery_destinations(url: str) -> list[Any]:
    from cdp.activation.destinations import parse_destinations

    return parse_destinations([
        {"id": "hooks", "name": "Webhook", "type": "webhook", "audiences": [AUDIENCE],
         "field_mapping": {"email": "email", "plan": "plan"},
         "settings": {"url": f"{url}/hooks", "secret_name": WEBHOOK_SECRET_NAME}},
        {"id": "files", "name": "Files", "type": "s3", "audiences": [AUDIENCE], "batch_size": 10_000,
         "field_mapping": {"email": "email", "plan": "plan"},
         "settings": {"bucket": EXPORT_BUCKET, "prefix": "cdp/", "format": "csv"}},
        {"id": "meta", "name": "Meta", "type": "meta_custom_audiences", "audiences": [AUDIENCE],
         "settings": {"ad_account_id": "act_1234567890", "access_token_secret_name": META_SECRET_NAME,
                      "audience_ids": {AUDIENCE: "23851234567890123"}}},
    ])


def sqs_records(destination: Any, pairs: Sequence[tuple[dict[str, Any] | None, dict[str, Any]]],
                queue_name: str) -> list[dict[str, Any]]:
    """The router's messages of these changes for ``destination``, as Lambda's SQS event
    records (FIFO attributes on a FIFO queue)."""
    from cdp.activation.router import membership_change, route_change
    from cdp.local.lambda_events import SqsMessage, sqs_event, sqs_queue_arn

    messages: list[SqsMessage] = []
    routed = []
    for old, new in pairs:
        change = membership_change(old, new)
        assert change is not None
        for message in route_change(change, [destination]).messages:
            routed.append(message)
            messages.append(SqsMessage(str(uuid.uuid4()), json.dumps(message.body, separators=(",", ":")), NOW))
    records: list[dict[str, Any]] = sqs_event(messages, queue_arn=sqs_queue_arn(queue_name))["Records"]
    if queue_name.endswith(".fifo"):
        for record, message in zip(records, routed, strict=True):
            record["attributes"].update({"MessageGroupId": message.message_group_id,
                                         "MessageDeduplicationId": message.deduplication_id,
                                         "SequenceNumber": "1"})
    return records


# --- figures -------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured configuration: totals over its measured invocations, per input."""

    name: str
    inputs: int = 0  # changes or events (or messages delivered)
    invocations: int = 0
    round_cpu_ms: list[float] = field(default_factory=list)  # CPU ms per input, per round
    first_cpu_ms: float = 0.0  # the warm-up invocation (built clients, config, secrets)
    wall_s: float = 0.0  # wall time of the measured invocations (moto and the fake answer locally)
    calls: Counter[str] = field(default_factory=Counter)  # "service Operation" -> count
    read_units: float = 0.0
    write_units: float = 0.0
    sqs_billed: int = 0  # SQS requests counted in 64 KB chunks
    s3_puts: int = 0
    s3_put_bytes: int = 0
    log_bytes: int = 0
    input_bytes: int = 0
    destination_requests: int = 0  # HTTP requests the far end received
    destination_rows: int = 0  # rows the fake Graph API received
    messages: int = 0  # messages sent to queues (router) / delivered (destination)

    @property
    def cpu_ms(self) -> float:
        return statistics.median(self.round_cpu_ms) if self.round_cpu_ms else 0.0

    def per(self, value: float, scale: float = 1.0) -> float:
        return value / self.inputs * scale if self.inputs else 0.0

    @property
    def aws_calls(self) -> int:
        return sum(self.calls.values())


class SqsSizedMeter(AwsMeter):
    """The meter, plus SQS requests billed in 64 KB chunks of their payload."""

    sqs_billed: Counter[str]

    def settle(self) -> None:
        if not hasattr(self, "sqs_billed"):
            self.sqs_billed = Counter()
        for call in self._pending:
            if call.service == "sqs":
                size = len(call.body) if isinstance(call.body, (bytes, str)) else 0
                self.sqs_billed[call.phase] += max(1, math.ceil(size / SQS_CHUNK_BYTES))
        super().settle()


class Harness:
    """moto in its own process, the fake far end in another, the handlers warm in this one."""

    def __init__(self, endpoint_url: str) -> None:
        from bench.pipeline import LogCapture, point_at

        self.url = endpoint_url
        point_at(self._moto_endpoint())
        self.workdir = Path(tempfile.mkdtemp(prefix="cdp-bench-activation-"))
        self.destinations_file = self.workdir / "destinations.json"
        os.environ[resources.DESTINATIONS_FILE_ENV] = str(self.destinations_file)
        os.environ["CDP_META_API_URL"] = endpoint_url
        from cdp.aws import clients
        from cdp.config import get_settings

        get_settings.cache_clear()  # a new destinations file and moto endpoint per harness
        self.meter = SqsSizedMeter(resources.TABLES)
        self.meter.install()
        clients.reset()
        from tests.conftest import FakeLambdaContext

        self.context = FakeLambdaContext()
        self.logs = LogCapture()
        from cdp.observability import logger

        logger.logger_handler.setStream(self.logs)  # type: ignore[attr-defined]
        self.sequence = 0
        self.last_wall_s = 0.0
        self.queues: list[tuple[str, dict[str, str]]] = []

    def _moto_endpoint(self) -> str:
        return os.environ["BENCH_MOTO_ENDPOINT"]

    def session(self) -> Any:
        import boto3

        return boto3.session.Session()

    def setup(self, phase: str = "setup") -> None:
        self.meter.phase = phase

    def settle_setup(self) -> None:
        self.meter.phase = None
        self.meter.settle()

    def provision(self, destinations: Sequence[Any], secrets: dict[str, str]) -> None:
        from cdp.local.activation import queue_attributes, store_secrets
        from cdp.local.provisioning import provision

        session = self.session()
        self.setup()
        try:
            provision(session)
            sqs = session.client("sqs")
            prefix = resources.LOCAL_DESTINATION_QUEUE_PREFIX
            for d in destinations:
                dlq = sqs.create_queue(QueueName=resources.destination_queue_name(prefix, d.id, d.type, True),
                                       Attributes=queue_attributes(d, None))["QueueUrl"]
                arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                name = resources.destination_queue_name(prefix, d.id, d.type)
                sqs.create_queue(QueueName=name, Attributes=queue_attributes(d, arn))
                self.queues.append((name, queue_attributes(d, arn)))
            store_secrets(session, secrets)
            session.client("s3").create_bucket(Bucket=EXPORT_BUCKET)
        finally:
            self.settle_setup()

    def seed(self, people: int, members: bool = True) -> None:
        """People's identity items and their (member) memberships items, unmeasured; the
        meter keeps their sizes (its shadow) for the read units."""
        ddb = self.session().client("dynamodb")
        items = [(resources.IDENTITY_TABLE.local_name, i) for n in range(people) for i in profile_items(n)]
        if members:
            items += [(resources.MEMBERSHIPS_TABLE.local_name, membership_item(n, True, 8)) for n in range(people)]
        self.setup()
        try:
            for start in range(0, len(items), 25):
                by_table: dict[str, list[dict[str, Any]]] = {}
                for table, item in items[start:start + 25]:
                    by_table.setdefault(table, []).append({"PutRequest": {"Item": item}})
                ddb.batch_write_item(RequestItems=by_table)
        finally:
            self.settle_setup()

    def purge_queues(self) -> None:
        """Empty the destination queues (unmeasured) by deleting and creating them again
        (same names, same URLs): moto's SendMessageBatch takes time in proportion to the
        messages a queue holds (about 0.3 s a request at 1,000 in a FIFO queue), which would
        make the wall times moto's. PurgeQueue is limited to once a minute."""
        sqs = self.session().client("sqs")
        self.setup("purge")
        try:
            for name, attributes in self.queues:
                url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
                sqs.delete_queue(QueueUrl=url)
                sqs.create_queue(QueueName=name, Attributes=attributes)
        finally:
            self.settle_setup()

    def write_destinations(self, destinations: Sequence[Any]) -> None:
        from cdp.activation.destinations import destinations_document

        self.destinations_file.write_text(destinations_document(destinations), encoding="utf-8")

    def invoke(self, module: Any, event: dict[str, Any], phase: str) -> tuple[float, dict[str, Any]]:
        """One handler call, metered; returns its CPU seconds and its response."""
        gc.freeze()  # the benchmark's own objects stay out of the handler's collections
        self.meter.phase = phase
        stdout, sys.stdout = sys.stdout, self.logs
        try:
            wall = time.perf_counter()
            start = time.process_time()
            response = module.handler(event, self.context)
            cpu = time.process_time() - start
            self.last_wall_s = time.perf_counter() - wall
        finally:
            sys.stdout = stdout
            self.meter.phase = None
        return cpu, response

    def collect(self, figures: Phase, phase: str) -> None:
        self.meter.settle()
        figures.log_bytes += len(self.logs.drain().encode("utf-8"))
        for (p, service, operation), n in self.meter.calls.items():
            if p == phase:
                figures.calls[f"{service} {operation}"] += n
        figures.read_units += sum(t.units for (p, _, _), t in self.meter.dynamodb.reads.items() if p == phase)
        figures.write_units += sum(t.units for (p, _, _), t in self.meter.dynamodb.writes.items() if p == phase)
        figures.sqs_billed += self.meter.sqs_billed.get(phase, 0)
        s3 = self.meter.s3.get(phase)
        if s3:
            figures.s3_puts += s3.puts
            figures.s3_put_bytes += s3.put_bytes
        self.meter.clear_tallies()
        self.meter.sqs_billed.clear()


# --- cost ----------------------------------------------------------------------------------


def cost_lines(figures: Phase, memory_mb: int, http_ms_per_request: float = 0.0,
               esm_sqs_per_input: float = 0.0) -> dict[str, float]:
    """$ per million inputs by service. Duration: the CPU (scaled to the memory size's
    share of a vCPU) plus an assumed wait per AWS call and per destination request; arm64."""
    per_input_ms = figures.cpu_ms / cpu_share(memory_mb) \
        + figures.per(figures.aws_calls) * ASSUMED_AWS_CALL_LATENCY_MS \
        + figures.per(figures.destination_requests) * http_ms_per_request
    lines = {
        "lambda requests": figures.per(figures.invocations, MILLION) * PRICES.lambda_request,
        "lambda duration": gb_seconds(per_input_ms * MILLION, memory_mb) * PRICES.lambda_gb_second_arm64,
        "sqs": (figures.per(figures.sqs_billed, MILLION) + esm_sqs_per_input * MILLION) * PRICES.sqs_request,
        "dynamodb reads": figures.per(figures.read_units, MILLION) * PRICES.dynamodb_read_unit,
        "dynamodb writes": figures.per(figures.write_units, MILLION) * PRICES.dynamodb_write_unit,
        "s3 puts": figures.per(figures.s3_puts, MILLION) * PRICES.s3_put,
        "cloudwatch logs": figures.per(figures.log_bytes, MILLION) / GB * PRICES.logs_ingest_gb,
    }
    lines["total"] = sum(lines.values())
    return lines


def _money(lines: dict[str, float]) -> str:
    return ", ".join(f"{k} ${v:.3f}" for k, v in lines.items() if v >= 0.0005 or k == "total")


def _calls(figures: Phase, per: int = 1000) -> str:
    return ", ".join(f"{name} {figures.per(n, per):.1f}" for name, n in sorted(figures.calls.items()))


# --- router ----------------------------------------------------------------------------------


def run_router(harness: Harness, args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.conftest import load_handler

    counts = [1, 3] if args.smoke else [1, 3, 10]
    inputs = args.changes
    batch = resources.ACTIVATION_MEMBERSHIPS_ESM.batch_size
    event_batch = resources.ACTIVATION_EVENTS_ESM.batch_size
    harness.provision(router_destinations(max(counts), False, harness.url),
                      {WEBHOOK_SECRET_NAME: "bench-signing-secret"})
    harness.seed(inputs + batch)
    module: Any = load_handler("activation_router")
    results = []
    memory = resources.ACTIVATION_ROUTER_FUNCTION.memory_mb
    print(f"router ({memory} MB): {inputs:,} changes / events per round, {args.rounds} round(s), "
          f"batches of {batch} (changes) and {event_batch} (events)")
    for count in counts:
        for kind, condition in (("changes", False), ("events", False), ("events", True)):
            harness.write_destinations(router_destinations(count, condition, harness.url))
            module.router.cache_clear()
            label = f"{kind}{' +audience' if condition else ''}, {count} destination(s)"
            figures = Phase(label)
            phase = "router"
            # warm-up: the configuration, the queue URLs (first records, not measured)
            warm = _router_inputs(kind, 0, 10 if args.smoke else batch, f"w{count}{int(condition)}", harness)
            figures.first_cpu_ms, _ = harness.invoke(module, warm[0], "warm")
            figures.first_cpu_ms *= 1000
            harness.purge_queues()
            harness.collect(Phase("warm"), "warm")
            for r in range(args.rounds):
                total = 0.0
                events = _router_inputs(kind, batch, inputs, f"r{r}c{count}{int(condition)}", harness,
                                        per_batch=batch if kind == "changes" else event_batch,
                                        figures=figures)
                for event in events:
                    cpu, response = harness.invoke(module, event, phase)
                    total += cpu
                    figures.wall_s += harness.last_wall_s
                    harness.purge_queues()
                    figures.messages += int(response.get("routed", 0))
                    figures.invocations += 1
                figures.inputs += inputs
                figures.round_cpu_ms.append(total * 1000 / inputs)
            harness.collect(figures, phase)
            print_router(figures, memory)
            results.append(_summary(figures, cost_lines(figures, memory)))
    return results


def _router_inputs(kind: str, first: int, count: int, tag: str, harness: Harness, per_batch: int = 100,
                   figures: Phase | None = None) -> list[dict[str, Any]]:
    events = []
    for start in range(first, first + count, per_batch):
        size = min(per_batch, first + count - start)
        harness.sequence += size
        if kind == "changes":
            events.append(membership_stream_event(change_pairs(start, size), harness.sequence))
        else:
            event, data_bytes = kinesis_batch([trigger_record(n, tag) for n in range(start, start + size)],
                                              harness.sequence)
            if figures is not None:
                figures.input_bytes += data_bytes
            events.append(event)
    return events


def print_router(figures: Phase, memory: int) -> None:
    rounds = ", ".join(f"{v:.3f}" for v in figures.round_cpu_ms)
    print(f"  {figures.name}: CPU {figures.cpu_ms:.3f} ms per input (rounds {rounds}; first invocation "
          f"{figures.first_cpu_ms:.1f} ms), messages {figures.per(figures.messages):.1f} per input, "
          f"local wall {figures.per(figures.wall_s * 1000):.2f} ms per input")
    print(f"    per 1,000: Lambda invocations {figures.per(figures.invocations, 1000):.1f}, "
          f"SQS requests {figures.per(figures.sqs_billed, 1000):.1f} (64 KB chunks), "
          f"DynamoDB read units {figures.per(figures.read_units, 1000):.1f}, AWS calls: {_calls(figures)}")
    if figures.input_bytes:
        print(f"    event record size {figures.input_bytes / figures.inputs:.0f} bytes")
    print(f"    cost per million: {_money(cost_lines(figures, memory))}")


def _summary(figures: Phase, cost: dict[str, float]) -> dict[str, Any]:
    return {"name": figures.name, "cpu_ms": figures.cpu_ms, "rounds": figures.round_cpu_ms,
            "first_cpu_ms": figures.first_cpu_ms, "calls_per_1000": {k: figures.per(v, 1000)
                                                                     for k, v in figures.calls.items()},
            "read_units_per_1000": figures.per(figures.read_units, 1000),
            "write_units_per_1000": figures.per(figures.write_units, 1000),
            "invocations_per_1000": figures.per(figures.invocations, 1000), "cost": cost}


# --- destinations ----------------------------------------------------------------------------


def run_destinations(harness: Harness, args: argparse.Namespace, endpoint: Any) -> list[dict[str, Any]]:
    from tests.conftest import load_handler

    destinations = delivery_destinations(harness.url)
    by_id = {d.id: d for d in destinations}
    batches = [100, 300] if args.smoke else [1_000, 10_000]
    webhook_changes = args.changes
    people = max(max(batches), webhook_changes) + 20
    harness.provision(destinations, {WEBHOOK_SECRET_NAME: "bench-signing-secret", META_SECRET_NAME: "bench-token"})
    harness.write_destinations(destinations)
    harness.seed(people)
    module: Any = load_handler("destination")
    memory = resources.DESTINATION_FUNCTION.memory_mb
    prefix = resources.LOCAL_DESTINATION_QUEUE_PREFIX
    plans: list[tuple[str, str, int, int]] = [("webhook", "hooks", 10, webhook_changes)]
    for size in batches:
        plans.append(("s3", "files", size, size))
    for size in batches:
        plans.append(("meta", "meta", size, size))
    print(f"destination ({memory} MB): webhook {webhook_changes:,} changes in FIFO batches of 10; "
          f"S3 export and Meta one batch of each of {', '.join(f'{b:,}' for b in batches)} per round; "
          f"{args.rounds} round(s)")
    results = []
    for kind, dest_id, size, total in plans:
        config = by_id[dest_id]
        queue = resources.destination_queue_name(prefix, config.id, config.type)
        figures = Phase(f"{kind}, batches of {size:,}")
        warm = sqs_records(config, change_pairs(0, min(size, 10)), queue)
        cpu, _ = harness.invoke(module, {"Records": warm}, "warm")
        figures.first_cpu_ms = cpu * 1000
        harness.collect(Phase("warm"), "warm")
        for _ in range(args.rounds):
            before = endpoint.stats()
            spent = 0.0
            for start in range(0, total, size):
                records = sqs_records(config, change_pairs(start, min(size, total - start)), queue)
                cpu, response = harness.invoke(module, {"Records": records}, "destination")
                if response.get("batchItemFailures"):
                    raise AssertionError(f"{kind}: failures {response['batchItemFailures'][:3]}")
                spent += cpu
                figures.wall_s += harness.last_wall_s
                figures.invocations += 1
                figures.messages += len(records)
            figures.inputs += total
            figures.round_cpu_ms.append(spent * 1000 / total)
            after = endpoint.stats()
            figures.destination_requests += after["requests"] - before["requests"]
            figures.destination_rows += after["rows"] - before["rows"]
        harness.collect(figures, "destination")
        if kind == "s3":
            figures.destination_requests = figures.s3_puts
        # ESM side (not made by the function, billed to the account): ReceiveMessage and
        # DeleteMessageBatch move at most 10 messages a request.
        esm = 2 / SQS_RECEIVE_MAX
        cost = cost_lines(figures, memory, ASSUMED_HTTP_LATENCY_MS[kind], esm)
        print_destination(figures, esm, cost)
        results.append(_summary(figures, cost))
    return results


def keepalive_check() -> dict[str, list[str]]:
    """Six webhook POSTs and two Meta requests to a kept-alive endpoint that answers 200
    with a body (as real ones do): each outcome. Evidence for a defect, not a figure."""
    from bench.activation_fakes import FakeEndpoint
    from cdp.activation.delivery import OutboundMessage
    from cdp.activation.meta_audiences import MetaCustomAudiencesDestination
    from cdp.activation.webhook import WebhookDestination

    with FakeEndpoint(answer_body=True) as endpoint:
        hook = WebhookDestination(url=f"{endpoint.url}/hooks", secrets=[b"secret"])
        hooks = hook.send([OutboundMessage(f"m{i}", {"i": i}) for i in range(6)])
        meta = MetaCustomAudiencesDestination(access_token="t", base_url=endpoint.url)
        view = {"identifiers": {"email": ["a@example.com"]}}
        metas = [meta.send([OutboundMessage(f"x{i}", {"kind": "audience_membership", "audience_id": "1",
                                                      "transition": "entered", "profile": view})])[0]
                 for i in range(4)]
    verdicts = {"webhook": [o.verdict + (f" ({o.reason})" if o.reason else "") for o in hooks],
                "meta": [o.verdict + (f" ({o.reason})" if o.reason else "") for o in metas]}
    print("keep-alive check (endpoint answers 200 with a JSON body):")
    for name, outcomes in verdicts.items():
        print(f"  {name}: {', '.join(outcomes)}")
    return verdicts


def print_destination(figures: Phase, esm_per_input: float, cost: dict[str, float]) -> None:
    rounds = ", ".join(f"{v:.3f}" for v in figures.round_cpu_ms)
    print(f"  {figures.name}: CPU {figures.cpu_ms:.3f} ms per delivered change (rounds {rounds}; "
          f"first invocation {figures.first_cpu_ms:.1f} ms), local wall {figures.per(figures.wall_s * 1000):.2f} ms")
    print(f"    per 1,000: Lambda invocations {figures.per(figures.invocations, 1000):.1f}, "
          f"SQS requests by the function {figures.per(figures.sqs_billed, 1000):.1f} "
          f"+ by the event source mapping {esm_per_input * 1000:.0f} (ReceiveMessage, DeleteMessageBatch), "
          f"destination requests {figures.per(figures.destination_requests, 1000):.1f}, "
          f"DynamoDB read units {figures.per(figures.read_units, 1000):.1f}, "
          f"write units {figures.per(figures.write_units, 1000):.1f}")
    print(f"    AWS calls per 1,000: {_calls(figures)}")
    if figures.s3_puts:
        print(f"    S3: {figures.per(figures.s3_put_bytes):.0f} bytes per row")
    if figures.destination_rows:
        print(f"    Graph API: {figures.destination_rows:,} rows received for {figures.inputs:,} changes")
    print(f"    cost per million delivered changes: {_money(cost)}")


# --- main ------------------------------------------------------------------------------------


def _with_aws(run: Callable[[Harness, Any], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    from bench.activation_fakes import FakeEndpoint
    from bench.segmentation import FastMotoServer

    with FastMotoServer() as moto, FakeEndpoint() as endpoint:
        os.environ["BENCH_MOTO_ENDPOINT"] = moto.endpoint
        harness = Harness(endpoint.url)
        return run(harness, endpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("router", "destination", "sync", "latency", "all"), nargs="?",
                        default="all")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every figure, in seconds")
    parser.add_argument("--changes", type=int, default=1000, help="changes/events per round (router, webhook)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", type=int, default=100_000, help="batch sync: audience size")
    parser.add_argument("--events", type=int, default=200, help="latency: events per kind")
    parser.add_argument("--interval", type=float, default=0.2, help="latency: seconds between events")
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false",
                        help="batch sync: skip the second, traced run (peak memory)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.changes, args.rounds, args.members, args.events, args.interval = 30, 1, 3000, 4, 0.1
    if not args.child:
        print(f"machine: {os.cpu_count()} CPUs, {_cpu_model()}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    figures: dict[str, Any] = {}
    if args.part in ("router", "all"):
        figures["router"] = _with_aws(lambda h, _e: run_router(h, args))
    if args.part in ("destination", "all"):
        figures["destination"] = _with_aws(lambda h, e: run_destinations(h, args, e))
    if args.part in ("destination", "all"):
        figures["keepalive"] = keepalive_check()
    # Batch syncs and the local stack run in processes of their own: a clean environment
    # (the parts above point boto3 at their moto server) and a ru_maxrss of their own.
    if args.part in ("sync", "all"):
        for destination in ("s3", "meta"):
            sync = ["--members", str(args.members), "--destination", destination]
            print(f"batch sync, {args.members:,} members, destination {destination}:", flush=True)
            _child(["bench.batch_sync", *sync])
            if args.tracemalloc:
                _child(["bench.batch_sync", *sync, "--tracemalloc"])
    if args.part == "latency" and not args.child:
        _child(["bench.activation", "latency", "--child", "--events", str(args.events),
                "--interval", str(args.interval)])
    elif args.part == "latency":
        from bench import activation_latency

        figures["latency"] = activation_latency.run(args.events, interval_s=args.interval)
    elif args.part == "all":
        _child(["bench.activation", "latency", "--child", "--events", str(args.events),
                "--interval", str(args.interval)])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


def _child(module_args: list[str]) -> None:
    import subprocess

    sys.stdout.flush()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "CDP_", "BENCH_"))}
    subprocess.run([sys.executable, "-m", *module_args], check=True, env=env,
                   cwd=Path(__file__).resolve().parents[1])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())

