"""Benchmark of the segmentation backfill (``cdp.aws.backfill_store``) against moto as a server.

    .venv/bin/python -m bench.backfill --profiles 100000 --workers 8 --segments 16
    .venv/bin/python -m bench.backfill --profiles 100000 --embedded   # moto in the job's process

A child process runs moto's server and fills it directly through moto's backend (setup
speed only: nothing of the setup is measured): N profiles, a share of them identified
(``prof#`` item with a user id and an anonymous id, two identifier items, two history
partitions), the others home profiles (one identifier item), each with a few events in
the events table, all received before the specs' ``live_from``. Two computed traits are
defined (a count of Pricing pages over 7 days, a sum of order totals), so the backfill
has two specs to fill. The backfill itself runs in this process through boto3, as in AWS.

Printed: wall time, profiles/s, our CPU (``time.process_time``: our code and boto3,
moto is in the other process), DynamoDB requests by operation, and request units per
profile computed by DynamoDB's rules (../shared/BENCHMARKING.md), never moto's:
Scan and Query round the total size of a page up to 4 KB, eventually consistent (half);
GetItem and BatchGetItem per item; PutItem and UpdateItem the larger of the item before
and after (the before size known from the read that returned the item), a failed
condition billed too.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.aws_meter import item_size
from bench.moto_process import free_port

ACCOUNT = "123456789012"
REGION = "us-east-1"
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
REGISTERED = NOW - timedelta(hours=2)


# --- the server child ----------------------------------------------------------------------


def _wire(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the HTTP API carries it (binary as base64 text), which moto's backend stores."""
    return {k: ({"B": base64.b64encode(v["B"]).decode()} if "B" in v else v) for k, v in item.items()}


def seed(profiles: int, events_per_profile: int, identified_share: float) -> int:
    """Fill moto's backend directly; returns the number of items written."""
    from moto.dynamodb.models import dynamodb_backends

    from cdp import resources
    from cdp.aws.event_store import event_item
    from cdp.aws.identity_graph import home_profile_id
    from cdp.identity.identifiers import Identifier
    from cdp.identity.profile_state import ProfileState, fold_event, state_to_json

    backend = dynamodb_backends[ACCOUNT][REGION]
    identity = backend.get_table(resources.IDENTITY_TABLE.local_name)
    events = backend.get_table(resources.EVENTS_TABLE.local_name)
    rng = random.Random(7)
    identified_every = max(1, round(1 / identified_share)) if identified_share > 0 else 0
    written = 0
    created = "2026-11-20T09:00:00.000000+00:00"
    for n in range(profiles):
        anonymous = f"anon-{n:07d}-{rng.getrandbits(32):08x}"
        user = f"user-{n:07d}" if identified_every and n % identified_every == 0 else None
        history = []
        for k in range(events_per_profile):
            at = (NOW - timedelta(days=rng.randint(1, 6), minutes=rng.randint(0, 1440))).isoformat(
                timespec="milliseconds").replace("+00:00", "Z")
            ids: dict[str, Any] = {"anonymousId": anonymous}
            if user and k > 0:
                ids["userId"] = user
            kind = rng.random()
            if kind < 0.4:
                event = {"type": "page", "name": "Pricing", "properties": {"path": "/pricing", "title": "Pricing"}}
            elif kind < 0.6:
                event = {"type": "track", "event": "Order Completed",
                         "properties": {"total": round(rng.uniform(5, 300), 2), "currency": "USD"}}
            else:
                event = {"type": "page", "name": "Home", "properties": {"path": "/", "title": "Home"}}
            history.append({**event, **ids, "messageId": f"msg-{n}-{k}", "timestamp": at, "originalTimestamp": at,
                            "sentAt": at, "receivedAt": at,
                            "context": {"library": {"name": "analytics.js", "version": "5.0.0"}, "locale": "en-US"}})
        state = ProfileState()
        for event in history:
            state = fold_event(state, event)
        attrs = {"created_at": {"S": created}, "updated_at": {"S": created}, "version": {"N": "2"},
                 "state": {"S": state_to_json(state)}}
        anon_key = f"ident#anonymous_id:{anonymous}"
        if user:
            profile = f"{n:032x}"
            user_key = f"ident#user_id:{user}"
            identity.put_item({"pk": {"S": f"prof#{profile}"}, "status": {"S": "live"},
                               "ids": {"SS": [anon_key, user_key]}, **attrs})
            identity.put_item({"pk": {"S": anon_key}, "profile_id": {"S": profile}})
            identity.put_item({"pk": {"S": user_key}, "profile_id": {"S": profile}})
            written += 3
        else:
            home = home_profile_id(Identifier("anonymous_id", anonymous))
            assert home is not None
            identity.put_item({"pk": {"S": anon_key}, "profile_id": {"S": home}, "solo": {"BOOL": True}, **attrs})
            written += 1
        for event in history:
            events.put_item(_wire(event_item("src_bench", event, 1_900_000_000, owner=f"shard:{n}")))
            written += 1
    return written


def start_server(port: int, profiles: int, events_per_profile: int, identified_share: float,
                 embedded: bool = False) -> tuple[Any, dict[str, Any]]:
    """moto's server with the local stack's fixes, tables created through it, data put
    straight into its backend; ``embedded``: the embedded stack's server (requests
    serialised, as ``cdp local`` runs it in its own process)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from cdp.local import moto_speedups
    from cdp.local.provisioning import provision
    from cdp.local.stack import MotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    moto_speedups.apply()  # as the local stack does (cdp.local.moto_speedups: reads that cost what they return)
    server = MotoServer("127.0.0.1", port) if embedded else \
        ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION})
    provision(boto3.session.Session())
    started = time.monotonic()
    written = seed(profiles, events_per_profile, identified_share)
    return server, {"ready": True, "items": written, "seed_s": round(time.monotonic() - started, 1)}


def serve(port: int, profiles: int, events_per_profile: int, identified_share: float) -> None:
    """Child process: ``start_server``, then serve until the parent closes our stdin."""
    server, ready = start_server(port, profiles, events_per_profile, identified_share)
    print(json.dumps(ready), flush=True)
    sys.stdin.read()
    server.stop()


# --- request units ---------------------------------------------------------------------------


def _sized(value: Any) -> Any:
    if isinstance(value, dict):
        if "B" in value and isinstance(value["B"], bytes | bytearray):
            return {"B": base64.b64encode(bytes(value["B"])).decode()}
        return {k: _sized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sized(v) for v in value]
    return value


def size_of(item: dict[str, Any]) -> int:
    return item_size(_sized(item))


class Meter:
    """Counts DynamoDB requests by operation and computes their request units (see module docstring)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.read_units = 0.0
        self.write_units = 0.0
        self.failed_conditions = 0
        self._sizes: dict[tuple[str, str], dict[str, Any]] = {}  # (table, pk) -> item as last read
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.dynamodb", self._before)
        client.meta.events.register("after-call.dynamodb", self._after)

    def _before(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = params

    def _after(self, http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any],
               **_: Any) -> None:
        op = model.name
        params = context.get("bench_params", {})
        table = params.get("TableName", "")
        half = 0.5 if not params.get("ConsistentRead") else 1.0
        with self._lock:
            self.calls[op] += 1
            if op in ("Scan", "Query"):
                items = parsed.get("Items", [])
                total = sum(size_of(i) for i in items)
                self.read_units += max(1, math.ceil(total / 4096)) * half
                for i in items:
                    if op == "Scan":
                        self._sizes[(table, i["pk"]["S"])] = i
            elif op == "BatchGetItem":
                for found_table, items in parsed.get("Responses", {}).items():
                    for i in items:
                        self.read_units += max(1, math.ceil(size_of(i) / 4096)) * 0.5
                        self._sizes[(found_table, i["pk"]["S"])] = i
            elif op == "GetItem":
                item = parsed.get("Item")
                self.read_units += max(1, math.ceil((size_of(item) if item else 1) / 4096)) * half
                if item and "pk" in item:
                    self._sizes[(table, item["pk"]["S"])] = item
            elif op in ("UpdateItem", "PutItem", "DeleteItem"):
                key = (params.get("Key") or params.get("Item") or {}).get("pk", {}).get("S", "")
                before = self._sizes.get((table, key))
                after = dict(params.get("Item") or before or params.get("Key") or {})
                values = params.get("ExpressionAttributeValues", {})
                if op == "UpdateItem" and ":agg" in values:
                    after.update(agg=values[":agg"], version=values[":next"])
                size = max(size_of(before) if before else 0, size_of(after))
                if op == "UpdateItem" and ":agg" not in values and before is None:
                    size = 1024 * 2  # a checkpoint or spec item: about 1-2 KB, counted as 2 units
                self.write_units += max(1, math.ceil(size / 1024))
                status = http_response.status_code if http_response is not None else 200
                if status >= 400:
                    self.failed_conditions += 1
                elif (op == "UpdateItem" and ":agg" in values) or op == "PutItem":
                    self._sizes[(table, key)] = after


# --- the run -----------------------------------------------------------------------------------


def define_traits(ddb: Any, segments_table: str) -> None:
    from cdp.segmentation.catalog import SpecRegistry
    from cdp.segmentation.definitions import AggregateSpec, ComputedTraitDefinition, DaysWindow

    definitions = [
        ComputedTraitDefinition(id="pricing_views_7d", name="Pricing views, 7 days",
                                aggregate=AggregateSpec(kind="count", event_type="page", event="Pricing",
                                                        window=DaysWindow(days=7))),
        ComputedTraitDefinition(id="ltv", name="Lifetime value",
                                aggregate=AggregateSpec(kind="sum", event="Order Completed", property="total")),
    ]
    for d in definitions:
        ddb.put_item(TableName=segments_table, Item={"pk": {"S": f"computed_trait#{d.id}"},
                                                     "definition": {"S": d.model_dump_json()}, "version": {"N": "1"}})
    SpecRegistry(ddb, segments_table, now=lambda: REGISTERED).sync(definitions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=3, help="events per profile")
    parser.add_argument("--identified", type=float, default=0.2, help="share of profiles with a user id")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--segments", type=int, default=16)
    parser.add_argument("--embedded", action="store_true",
                        help="moto in this process, as the embedded local stack (cdp local) runs it: one GIL "
                             "for moto and the job (default: moto in a child process)")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.profiles, args.events, args.identified)
        return

    port = free_port()
    child: subprocess.Popen[str] | None = None
    server: Any = None
    if args.embedded:
        server, ready = start_server(port, args.profiles, args.events, args.identified, embedded=True)
    else:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.backfill", "--serve", str(port), "--profiles", str(args.profiles),
             "--events", str(args.events), "--identified", str(args.identified)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1], text=True)
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline() or "{}")
    try:
        if not ready.get("ready"):
            raise RuntimeError("the moto server did not start")
        os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
                           "POWERTOOLS_LOG_LEVEL": "WARNING", "LOG_LEVEL": "WARNING"})
        import boto3
        from botocore.config import Config

        from cdp import resources
        from cdp.aws.backfill_store import DynamoBackfill, backfill_status

        ddb = boto3.session.Session().client("dynamodb")
        define_traits(ddb, resources.SEGMENTS_TABLE.local_name)
        meter = Meter()

        def client() -> Any:
            # The functions' client settings (cdp.aws.clients), with a pool per worker.
            c = boto3.session.Session().client("dynamodb", config=Config(
                max_pool_connections=4, retries={"mode": "standard"}, parameter_validation=False))
            meter.attach(c)
            return c

        job = DynamoBackfill(client, resources.IDENTITY_TABLE.local_name, resources.EVENTS_TABLE.local_name,
                             resources.SEGMENTS_TABLE.local_name, segments=args.segments, workers=args.workers,
                             now=lambda: NOW)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        outcome = job.run(deadline=time.monotonic() + 3600)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        (status,) = backfill_status(ddb, resources.SEGMENTS_TABLE.local_name)
        profiles = args.profiles
        print(json.dumps({
            "profiles": profiles, "events_per_profile": args.events, "identified_share": args.identified,
            "seeded_items": ready["items"], "seed_s": ready["seed_s"],
            "moto": "in this process (embedded stack)" if args.embedded else "child process",
            "workers": args.workers, "segments": args.segments, "outcome": outcome.state,
            "scanned": outcome.scanned, "profiles_examined": outcome.profiles, "profiles_written": outcome.written,
            "conflicts": outcome.conflicts, "status_progress": status.progress,
            "wall_s": round(wall, 1), "profiles_per_s": round(profiles / wall, 1),
            "cpu_s": round(cpu, 1), "cpu_ms_per_profile": round(1000 * cpu / profiles, 3),
            "requests": dict(meter.calls), "requests_per_profile": round(sum(meter.calls.values()) / profiles, 3),
            "read_units_per_profile": round(meter.read_units / profiles, 3),
            "write_units_per_profile": round(meter.write_units / profiles, 3),
            "failed_conditions": meter.failed_conditions,
        }, indent=2))
    finally:
        if server is not None:
            server.stop()
        if child is not None:
            if child.stdin:
                child.stdin.close()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    main()
