"""Property: duplicates, redelivery, reordering and crashes converge to one copy per event."""

from __future__ import annotations

import json
import random

import boto3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from cdp import resources
from cdp.aws.archive import S3Archive
from cdp.aws.dedupe_store import DedupeStore
from cdp.aws.event_store import DynamoEventStore
from cdp.aws.quarantine_store import QuarantineStore
from cdp.pipeline import InboundRecord, StreamConsumer
from tests.integration.conftest import create_resources, scan


class CrashingStage:
    """Wraps the event store; crashes on chosen calls, after writing half (a torn batch)."""

    def __init__(self, inner: DynamoEventStore, crash_on: set[int]) -> None:
        self.inner = inner
        self.crash_on = crash_on
        self.calls = 0

    def store(self, pairs):
        self.calls += 1
        if self.calls in self.crash_on:
            self.inner.store(pairs[: len(pairs) // 2])
            raise RuntimeError("crash mid-batch")
        self.inner.store(pairs)


def record(seq: int, message_id: str, shard: str = "shardId-000000000000") -> InboundRecord:
    envelope = {"v": 1, "kind": "event", "source_id": "src",
                "event": {"type": "track", "userId": f"user-{message_id[-1]}", "event": "E",
                          "messageId": message_id, "receivedAt": "2026-11-28T10:00:00.000Z",
                          "timestamp": "2026-11-28T10:00:00.000Z"}}
    return InboundRecord(shard, f"{seq:021d}", 1795860000.0, json.dumps(envelope).encode())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    message_ids=st.lists(st.sampled_from([f"m{i}" for i in range(8)]), min_size=1, max_size=30),
    batch_size=st.integers(min_value=1, max_value=10),
    crash_on=st.sets(st.integers(min_value=1, max_value=6), max_size=3),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_every_event_is_stored_exactly_once(message_ids, batch_size, crash_on, seed):
    rng = random.Random(seed)
    with mock_aws():
        create_resources()
        ddb = boto3.client("dynamodb")
        stage = CrashingStage(DynamoEventStore(ddb, resources.EVENTS_TABLE.local_name), crash_on)
        consumer = StreamConsumer(
            dedupe=DedupeStore(ddb, resources.DEDUPE_TABLE.local_name, sleep=lambda s: None),
            archive=S3Archive(boto3.client("s3"), resources.ARCHIVE_BUCKET.local_name),
            stages=[stage],
            quarantine=QuarantineStore(ddb, resources.QUARANTINE_TABLE.local_name),
        )
        # Two shards receive copies (an SDK retry can land anywhere); each shard is
        # delivered in order, the shards interleave at random, like parallel consumers.
        shards: dict[str, list[InboundRecord]] = {"shardId-a": [], "shardId-b": []}
        for seq, message_id in enumerate(message_ids):
            shard = rng.choice(list(shards))
            shards[shard].append(record(seq, message_id, shard))
        positions = dict.fromkeys(shards, 0)
        rounds = 0
        while any(positions[s] < len(shards[s]) for s in shards):
            rounds += 1
            assert rounds < 500, "no progress"
            shard = rng.choice([s for s in shards if positions[s] < len(shards[s])])
            batch = shards[shard][positions[shard]: positions[shard] + batch_size]
            outcome = consumer.process(batch)
            if outcome.failed:
                # Lambda resumes the shard at the lowest failed sequence number.
                failed_at = min(i for i, r in enumerate(batch) if r.owner in outcome.failed)
                positions[shard] += failed_at
            else:
                positions[shard] += len(batch)

        items = scan(resources.EVENTS_TABLE.local_name)
        stored = sorted(json.loads(i["payload"])["messageId"] for i in items)
        assert stored == sorted(set(message_ids))
        claims = scan(resources.DEDUPE_TABLE.local_name)
        assert sorted(c["pk"] for c in claims) == sorted(f"src#{m}" for m in set(message_ids))
