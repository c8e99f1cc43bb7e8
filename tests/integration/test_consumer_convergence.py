"""Property: duplicates, redelivery, reordering and crashes converge to one copy per event, one profile per person."""

from __future__ import annotations

import json
import random

import boto3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from cdp import resources
from cdp.aws.archive import S3Archive
from cdp.aws.event_store import HistoryStore, event_of_item
from cdp.aws.identity_graph import DynamoIdentityGraph
from cdp.aws.profile_store import ProfileRecords
from cdp.aws.quarantine_store import QuarantineStore
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier
from cdp.pipeline import InboundRecord, StreamConsumer
from cdp.unification import UnificationStage
from tests.integration.conftest import create_resources, scan


class CrashingStage:
    """Wraps the unification stage; crashes on chosen calls, after doing half (a torn batch)."""

    def __init__(self, inner: UnificationStage, crash_on: set[int]) -> None:
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
                "event": {"type": "identify", "userId": f"user-{message_id[-1]}", "traits": {"seen": message_id},
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
        config = IdentityConfig()
        graph = DynamoIdentityGraph(ddb, resources.IDENTITY_TABLE.local_name, config,
                                    records_table=resources.EVENTS_TABLE.local_name, sleep=lambda s: None)
        unification = UnificationStage(graph, ProfileRecords(ddb, resources.EVENTS_TABLE.local_name), config)
        stage = CrashingStage(unification, crash_on)
        consumer = StreamConsumer(
            history=HistoryStore(ddb, resources.EVENTS_TABLE.local_name, sleep=lambda s: None),
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

        items = [i for i in scan(resources.EVENTS_TABLE.local_name) if i["pk"].startswith("u#")]
        stored = sorted(event_of_item(i)["messageId"] for i in items)
        assert stored == sorted(set(message_ids))
        # Every person has one profile, with the trait of their events (all at the same
        # time: the largest messageId wins the tie), whatever crashed and was redone.
        for person in {m[-1] for m in message_ids}:
            profile = graph.lookup_identifier(Identifier("user_id", f"user-{person}"))
            assert profile is not None
            state = graph.state_of(profile)
            assert state is not None
            assert state.traits["seen"].value == max(m for m in message_ids if m[-1] == person)
