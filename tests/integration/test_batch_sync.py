"""Batch syncs on moto (cdp.aws.sync_store): the members index, snapshots in S3, the state
item in the segments table. A first sync sends every member, the next only the
difference; a sync stopped by its deadline resumes where it stopped; a second invocation
is refused by the lease; memory does not grow with the audience."""

from __future__ import annotations

import bisect
import gzip
import tracemalloc
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cdp import resources
from cdp.activation.delivery import OutboundMessage, Outcome
from cdp.aws import sync_store
from cdp.aws.dynamo import batch_write
from cdp.aws.membership_store import MEMBERS_INDEX
from cdp.aws.sync_store import DynamoMembers, S3Snapshots, batch_sync, state_key, sync_status
from cdp.local.provisioning import create_table_request

MEMBERSHIPS = resources.MEMBERSHIPS_TABLE.local_name
SEGMENTS = resources.SEGMENTS_TABLE.local_name
BUCKET = "cdp-activation-test"
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        ddb, s3 = boto3.client("dynamodb"), boto3.client("s3")
        ddb.create_table(**create_table_request(resources.MEMBERSHIPS_TABLE))
        ddb.create_table(**create_table_request(resources.SEGMENTS_TABLE))
        s3.create_bucket(Bucket=BUCKET)
        yield ddb, s3


def membership(profile_id: str, audience_id: str, member: bool) -> dict[str, Any]:
    item = {"profile_id": {"S": profile_id}, "audience_id": {"S": audience_id}, "member": {"BOOL": member},
            "profile_version": {"N": "1"}, "changed_version": {"N": "1"}}
    if member:
        item["member_of"] = {"S": audience_id}
    return item


def put(ddb: Any, items: list[dict[str, Any]]) -> None:
    batch_write(ddb, MEMBERSHIPS, [{"PutRequest": {"Item": i}} for i in items], sleep=lambda s: None)


class Destination:
    def __init__(self) -> None:
        self.calls: list[list[OutboundMessage]] = []

    def __call__(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        self.calls.append(list(messages))
        return [Outcome("delivered")] * len(messages)

    def sent(self) -> list[tuple[str, str]]:
        return [(m.body["profile_id"], m.body["transition"]) for call in self.calls for m in call]


def forever() -> float:
    return 600.0


def snapshot_ids(s3: Any, key: str) -> list[str]:
    """A snapshot read as a plain client would: the manifest's parts, gunzipped, concatenated."""
    import json
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    text = b"".join(gzip.decompress(s3.get_object(Bucket=BUCKET, Key=p)["Body"].read()) for p in manifest["parts"])
    return text.decode().split()


def sync_prefixes(s3: Any) -> set[str]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="snapshots/meta/pro/").get("Contents", [])]
    return {k.split("/")[3] for k in keys}


def test_first_sync_sends_every_member_then_only_the_difference(aws: tuple[Any, Any]) -> None:
    ddb, s3 = aws
    members = [f"p{n:05d}" for n in range(2_500)]
    put(ddb, [membership(p, "pro", True) for p in members]
        + [membership(f"x{n}", "pro", False) for n in range(50)]  # former members
        + [membership(f"p{n:05d}", "other", True) for n in range(100)])  # another audience
    sync = batch_sync(ddb, s3, MEMBERSHIPS, SEGMENTS, BUCKET, now=lambda: NOW, part_members=1_000)

    first = Destination()
    result = sync.run("meta", "pro", 1_000, first, forever)

    assert result.outcome == "done"
    assert [len(c) for c in first.calls] == [1_000, 1_000, 500]
    assert first.sent() == [(p, "entered") for p in members]
    body = first.calls[0][0].body
    assert body["kind"] == "audience_membership" and body["event"] == "Audience Entered"
    assert body["message_id"] == first.calls[0][0].deduplication_id == f"sync:{result.sync_id}:pro:p00000:entered"
    status = sync_status(ddb, SEGMENTS, "meta", "pro", now=lambda: NOW)
    assert status["status"] == "done" and status["counts"]["adds"] == 2_500 and status["progress"] == 1.0
    assert status["active"] is False and status["last_success_at"]
    assert snapshot_ids(s3, status["snapshot_key"]) == members
    assert status["snapshot_key"] == f"snapshots/meta/pro/{result.sync_id}/manifest.json"

    put(ddb, [membership("p00007", "pro", False), membership("p02000", "pro", False),
              membership("p00003a", "pro", True), membership("x1", "pro", True)])
    second = Destination()
    assert sync.run("meta", "pro", 1_000, second, forever).outcome == "done"

    assert second.sent() == [("p00003a", "entered"), ("p00007", "exited"), ("p02000", "exited"), ("x1", "entered")]
    later = sync_status(ddb, SEGMENTS, "meta", "pro", now=lambda: NOW)
    assert (later["counts"]["adds"], later["counts"]["removes"], later["counts"]["members"]) == (2, 2, 2_500)
    assert later["progress"] == 1.0
    expected = sorted(set(members) - {"p00007", "p02000"} | {"p00003a", "x1"})
    assert snapshot_ids(s3, later["snapshot_key"]) == expected

    third = Destination()
    sync.run("meta", "pro", 1_000, third, forever)
    assert third.calls == []
    assert len(sync_prefixes(s3)) == 2  # the first sync's snapshot is deleted; the last two stay


def test_a_sync_stopped_by_its_deadline_resumes_after_its_cursor(aws: tuple[Any, Any]) -> None:
    ddb, s3 = aws
    members = [f"p{n:05d}" for n in range(3_000)]
    put(ddb, [membership(p, "pro", True) for p in members])
    queries: list[dict[str, Any]] = []
    ddb.meta.events.register("provide-client-params.dynamodb.Query", lambda params, **_: queries.append(params))
    sync = batch_sync(ddb, s3, MEMBERSHIPS, SEGMENTS, BUCKET, now=lambda: NOW, part_members=500,
                      stop_margin_s=30.0)
    deliver = Destination()

    def deadline() -> float:  # a Lambda invocation that runs out after three chunks
        return 10.0 if len(deliver.calls) >= 3 else 600.0

    stopped = sync.run("meta", "pro", 400, deliver, deadline)

    assert stopped.outcome == "stopped" and stopped.reason == "deadline"
    status = sync_status(ddb, SEGMENTS, "meta", "pro", now=lambda: NOW)
    assert status["status"] == "running" and status["stopped"] == "deadline" and status["cursor_set"]
    assert status["counts"]["adds"] == 1_200 and status["active"] is False
    queries.clear()
    resumed = sync.run("meta", "pro", 400, deliver, forever)

    assert resumed.outcome == "done" and resumed.sync_id == stopped.sync_id
    # No page before the cursor is read again.
    assert queries[0]["KeyConditionExpression"] == "member_of = :a AND profile_id > :after"
    assert queries[0]["ExpressionAttributeValues"][":after"] == {"S": "p01199"}
    ids = [m.deduplication_id for call in deliver.calls for m in call]
    assert len(ids) == len(set(ids)) == 3_000  # a clean stop sends nothing twice
    final = sync_status(ddb, SEGMENTS, "meta", "pro", now=lambda: NOW)
    assert final["counts"]["adds"] == 3_000 and snapshot_ids(s3, final["snapshot_key"]) == members


def test_a_second_invocation_is_refused_while_the_first_holds_the_lease(aws: tuple[Any, Any]) -> None:
    ddb, s3 = aws
    put(ddb, [membership(f"p{n}", "pro", True) for n in range(30)])
    first = batch_sync(ddb, s3, MEMBERSHIPS, SEGMENTS, BUCKET, now=lambda: NOW)
    second = batch_sync(ddb, s3, MEMBERSHIPS, SEGMENTS, BUCKET, now=lambda: NOW)
    seen: list[str] = []

    def deliver(messages: Sequence[OutboundMessage]) -> list[Outcome]:
        if not seen:  # while the first run is delivering, a second schedule tick arrives
            seen.append(second.run("meta", "pro", 10, Destination(), forever).outcome)
            seen.append(sync_status(ddb, SEGMENTS, "meta", "pro", now=lambda: NOW)["active"])
        return [Outcome("delivered")] * len(messages)

    assert first.run("meta", "pro", 10, deliver, forever).outcome == "done"
    assert seen == ["busy", True]
    item = ddb.get_item(TableName=SEGMENTS, Key=state_key("meta", "pro"))["Item"]
    assert "lease_owner" not in item and item["status"]["S"] == "done"


def test_a_snapshot_streams_back_across_parts_and_small_reads(aws: tuple[Any, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, s3 = aws
    monkeypatch.setattr(sync_store, "READ_BYTES", 7)  # reads end mid-line and mid-gzip-header
    snapshots = S3Snapshots(s3, BUCKET)
    ids = [f"profile-{n:04d}-é" for n in range(900)]
    for number, start in enumerate(range(0, 900, 250), start=1):
        snapshots.write_part("meta", "pro", "s1", number, ids[start:start + 250])
    key = snapshots.finish("meta", "pro", "s1", 4, 900)
    assert list(snapshots.read(key, None)) == ids
    assert list(snapshots.read(key, ids[600])) == ids[601:]
    assert snapshots.size(key) == 900
    assert snapshot_ids(s3, key) == ids


def test_a_resumed_second_sync_diffs_against_the_rest_of_the_previous_snapshot(aws: tuple[Any, Any]) -> None:
    ddb, s3 = aws
    members = [f"p{n:05d}" for n in range(2_000)]
    put(ddb, [membership(p, "pro", True) for p in members])
    sync = batch_sync(ddb, s3, MEMBERSHIPS, SEGMENTS, BUCKET, now=lambda: NOW, part_members=300)
    sync.run("meta", "pro", 100, Destination(), forever)
    gone = members[::7]
    put(ddb, [membership(p, "pro", False) for p in gone] + [membership(f"q{n}", "pro", True) for n in range(40)])
    deliver = Destination()

    def deadline() -> float:
        return 0.0 if len(deliver.calls) == 2 else 600.0

    assert sync.run("meta", "pro", 100, deliver, deadline).outcome == "stopped"
    # Two chunks of 100 removes, one every 7 ids: about 1,400 of the 2,000 ids merged.
    assert sync_status(ddb, SEGMENTS, "meta", "pro", now=lambda: NOW)["progress"] == pytest.approx(0.7, abs=0.1)
    assert sync.run("meta", "pro", 100, deliver, forever).outcome == "done"
    assert sorted(deliver.sent()) == sorted([(p, "exited") for p in gone] + [(f"q{n}", "entered") for n in range(40)])
    status = sync_status(ddb, SEGMENTS, "meta", "pro", now=lambda: NOW)
    assert snapshot_ids(s3, status["snapshot_key"]) == sorted(set(members) - set(gone) | {f"q{n}" for n in range(40)})


# --- memory ----------------------------------------------------------------------------------


class IndexedMembers:
    """The moto client, but the ``members`` index Query answered from a sorted list with
    DynamoDB's paging (moto's Query of an index reads and sorts the whole table for each
    page: 1.4 s a page at 100,000 items). Checked against moto below."""

    def __init__(self, client: Any, ids: list[str]) -> None:
        self._client = client
        self._ids = ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def query(self, **request: Any) -> dict[str, Any]:
        if request.get("IndexName") != MEMBERS_INDEX:
            return dict(self._client.query(**request))
        audience = request["ExpressionAttributeValues"][":a"]["S"]
        start = request.get("ExclusiveStartKey")
        after = request["ExpressionAttributeValues"].get(":after")
        assert after is None or request["KeyConditionExpression"] == "member_of = :a AND profile_id > :after"
        first = bisect.bisect_right(self._ids, start["profile_id"]["S"] if start else after["S"] if after else "")
        page = self._ids[first:first + request["Limit"]]
        answer: dict[str, Any] = {"Items": [{"profile_id": {"S": p}} for p in page], "Count": len(page)}
        if first + len(page) < len(self._ids):
            answer["LastEvaluatedKey"] = {"member_of": {"S": audience}, "profile_id": {"S": page[-1]},
                                          "audience_id": {"S": audience}}
        return answer


def test_the_stand_in_index_pages_as_moto_does(aws: tuple[Any, Any]) -> None:
    ddb, _ = aws
    ids = [f"p{n:04d}" for n in range(1_500)]
    put(ddb, [membership(p, "pro", True) for p in ids])
    for after in (None, "p0999", "p0999a"):
        assert list(DynamoMembers(ddb, MEMBERSHIPS).members("pro", after)) == \
            list(DynamoMembers(IndexedMembers(ddb, ids), MEMBERSHIPS).members("pro", after))


def peak_of_full_sync(size: int) -> int:
    with mock_aws():
        ddb, s3 = boto3.client("dynamodb"), boto3.client("s3")
        ddb.create_table(**create_table_request(resources.MEMBERSHIPS_TABLE))
        ddb.create_table(**create_table_request(resources.SEGMENTS_TABLE))
        s3.create_bucket(Bucket=BUCKET)
        ids = [f"profile-{n:09d}" for n in range(size)]
        sync = batch_sync(IndexedMembers(ddb, ids), s3, MEMBERSHIPS, SEGMENTS, BUCKET, now=lambda: NOW,
                          part_members=5_000)
        count = [0]

        def deliver(messages: Sequence[OutboundMessage]) -> list[Outcome]:
            count[0] += len(messages)
            return [Outcome("delivered")] * len(messages)

        tracemalloc.start()
        try:
            assert sync.run("s3-export", "pro", 1_000, deliver, forever).outcome == "done"
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert count[0] == size
        return peak


def test_memory_stays_flat_as_the_audience_grows() -> None:
    small, large = peak_of_full_sync(20_000), peak_of_full_sync(100_000)
    # Holding the 100,000 ids would alone take ~7 MB; the difference allowed is what moto
    # keeps of the snapshot (its gzip parts, ~0.3 MB more) and noise.
    assert large < small + 1_500_000, (small, large)
