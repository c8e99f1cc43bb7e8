"""Fakes for the local stack's unit tests: scripted handlers, a stub Kinesis, records, a clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdp.local.functions import LocalFunction
from cdp.local.lambda_events import KinesisRecord

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/cdp-events"
SHARD = "shardId-000000000000"
NOW = 1_714_641_707.0  # 2024-05-02T09:21:47Z


def make_records(count: int, *, start: int = 1, arrival: float = NOW - 5.0, shard: str = SHARD,
                 partition_key: Callable[[int], str] = lambda i: f"pk-{i % 3}") -> list[KinesisRecord]:
    return [
        KinesisRecord(shard_id=shard, sequence_number=f"{49_000_000_000 + i}", partition_key=partition_key(i),
                      data=f'{{"n":{i}}}'.encode(), approximate_arrival=arrival + i * 0.001)
        for i in range(start, start + count)
    ]


def sequences(event: dict[str, Any]) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for r in event["Records"]]


@dataclass
class ScriptedHandler:
    """A stream handler whose answer per invocation is decided by ``respond``.

    ``respond(event, call_number)`` returns the handler's result or raises.
    Every event received is kept, in order.
    """

    respond: Callable[[dict[str, Any], int], Any] = lambda _event, _n: {"batchItemFailures": []}
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any], _context: Any) -> Any:
        with self.lock:
            self.events.append(event)
            number = len(self.events)
        return self.respond(event, number)

    def batches(self) -> list[list[str]]:
        return [sequences(event) for event in self.events]


def local_function(handler: Callable[[dict[str, Any], Any], Any], name: str = "cdp-stream-consumer",
                   max_concurrency: int = 1) -> LocalFunction:
    return LocalFunction(name, lambda _index: handler, memory_mb=512, timeout_s=60,
                         max_concurrency=max_concurrency)


class StubKinesis:
    """Just what ``deliver`` needs from a Kinesis client."""

    def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:
        return {"StreamDescriptionSummary": {"StreamARN": STREAM_ARN, "StreamName": StreamName}}


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
