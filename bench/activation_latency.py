"""Event-to-delivery latency on the local stack (``cdp.local.EmbeddedStack``).

    .venv/bin/python -m bench.activation latency --events 200

Two destinations (both webhooks, to a receiver in another process that answers 200 at
once and notes each request's arrival time on this machine's clock):

* ``lat-entries`` lists the audience ``latency-gold`` (trait ``latency_tier`` equals
  ``gold``): (b) an ``identify`` of a new person with that trait goes collector -> event
  stream -> stream consumer -> identity table stream -> segment evaluator -> memberships
  table stream -> router -> FIFO queue -> destination function -> receiver;
* ``lat-triggers`` has a trigger on ``track "Latency Ping"``: (a) collector -> event
  stream -> router -> FIFO queue -> destination function -> receiver.

Events go through the HTTP API with the Segment SDK (``segment.analytics``, sync mode: one
request per call), one every ``--interval`` seconds, so the figure is the path's latency,
not a queue's backlog. Latency: the receiver's arrival time minus the time just before the
SDK call.

The local stack runs the deployed event source mapping settings (batch sizes and windows:
1 s batching windows on the Kinesis and DynamoDB Streams mappings, none on FIFO queues)
with its own pollers (Kinesis every 0.2 s, DynamoDB Streams every 0.25 s, SQS every 0.1 s,
as ``poll_interval_s``), on moto, in one process on a shared machine.
"""

from __future__ import annotations

import base64
import io
import json
import math
import statistics
import sys
import time
import urllib.request
import uuid
from typing import Any

AUDIENCE = "latency-gold"
TRIGGER = "Latency Ping"
WRITE_KEY = "bench-latency-key"
SECRET_NAME = "cdp/bench/latency"


def _admin(api_url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{api_url}/v1/admin{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Basic " + base64.b64encode(f"{token}:".encode()).decode(),
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _wait(check: Any, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except OSError:
            pass
        time.sleep(step)
    return False


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def run(events: int, smoke: bool = False, interval_s: float = 0.2) -> dict[str, Any]:
    import segment.analytics as segment_analytics

    from bench.activation_fakes import FakeEndpoint
    from cdp.activation.destinations import parse_destinations
    from cdp.local import EmbeddedStack

    with FakeEndpoint(keep=True) as receiver:
        destinations = parse_destinations([
            {"id": "lat-entries", "name": "Entries", "type": "webhook", "audiences": [AUDIENCE],
             "settings": {"url": f"{receiver.url}/entries", "secret_name": SECRET_NAME}},
            {"id": "lat-triggers", "name": "Pings", "type": "webhook",
             "triggers": [{"name": "ping", "event": TRIGGER}],
             "settings": {"url": f"{receiver.url}/triggers", "secret_name": SECRET_NAME}},
        ])
        # The functions' logs and metrics (stdout) would bury the figures: kept aside.
        out, sink = sys.stdout, io.StringIO()
        from cdp.observability import logger

        logger.logger_handler.setStream(sink)  # type: ignore[attr-defined]
        sys.stdout = sink
        stack = EmbeddedStack(port=0, aws_port=0, write_key=WRITE_KEY, destinations=destinations,
                              destination_secrets={SECRET_NAME: "bench-latency-secret"})
        started = time.monotonic()
        stack.start()
        try:
            api = stack.api_url
            _admin(api, stack.access_token, "POST", "/audiences", {
                "id": AUDIENCE, "name": "Latency gold",
                "condition": {"type": "trait", "trait": "latency_tier", "op": "equals", "value": "gold"}})
            if not _wait(lambda: _admin(api, stack.access_token, "GET", f"/audiences/{AUDIENCE}")["status"]
                         == "ready", 180):
                raise RuntimeError("the audience did not become ready")
            print(f"latency: stack up and audience ready in {time.monotonic() - started:.1f} s; "
                  f"{events} events per path, one every {interval_s} s", file=out, flush=True)
            client = segment_analytics.Client(WRITE_KEY, host=api, sync_mode=True)
            run_id = uuid.uuid4().hex[:6]
            sent: dict[str, dict[str, float]] = {"trigger": {}, "entry": {}}
            for n in range(events):
                user = f"lat-{run_id}-t{n}"
                sent["trigger"][user] = time.time()
                client.track(user, TRIGGER, {"n": n})
                time.sleep(interval_s)
            for n in range(events):
                user = f"lat-{run_id}-e{n}"
                sent["entry"][user] = time.time()
                client.identify(user, {"latency_tier": "gold"})
                time.sleep(interval_s)
            client.flush()

            def arrivals() -> dict[str, dict[str, float]]:
                found: dict[str, dict[str, float]] = {"trigger": {}, "entry": {}}
                for request in receiver.received():
                    path = "trigger" if request["path"].endswith("/triggers") else "entry"
                    user = request.get("user_id")
                    if user and user not in found[path]:
                        found[path][user] = request["at"]
                return found

            _wait(lambda: all(len(arrivals()[k]) >= events for k in sent), 120, 1.0)
            got = arrivals()
        finally:
            stack.stop()
            sys.stdout = out
            logger.logger_handler.setStream(out)  # type: ignore[attr-defined]
    result: dict[str, Any] = {}
    for kind, label in (("trigger", "(a) track -> trigger -> webhook"),
                        ("entry", "(b) identify -> audience entry -> webhook")):
        latencies = [(got[kind][u] - t) * 1000 for u, t in sent[kind].items() if u in got[kind]]
        missing = len(sent[kind]) - len(latencies)
        figures = {"delivered": len(latencies), "missing": missing,
                   "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
                   "min_ms": min(latencies) if latencies else float("nan"),
                   "max_ms": max(latencies) if latencies else float("nan"),
                   "mean_ms": statistics.fmean(latencies) if latencies else float("nan")}
        result[kind] = figures
        print(f"  {label}: p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms "
              f"(min {figures['min_ms']:.0f}, max {figures['max_ms']:.0f}, {len(latencies)} delivered, "
              f"{missing} missing)")
    return result
