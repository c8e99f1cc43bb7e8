"""Benchmark of a batch sync (``cdp.activation.sync`` over ``cdp.aws.sync_store``) on moto, in process.

    .venv/bin/python -m bench.batch_sync --members 100000
    .venv/bin/python -m bench.batch_sync --members 1000000 --change 0.01 --tracemalloc
    .venv/bin/python -m bench.batch_sync --members 20000 --moto-index     # moto's own index Query
    .venv/bin/python -m bench.batch_sync --members 100000 --s3-export      # rows into an export file
    .venv/bin/python -m bench.batch_sync --members 100000 --destination s3    # the real S3ExportDestination
    .venv/bin/python -m bench.batch_sync --members 100000 --destination meta  # the real Meta destination

Two syncs of one audience: the first (every member is an add), then, with ``--change``
of the members replaced by others, the second (the difference only). The destination is
a fake that answers "delivered" (or, with ``--s3-export`` and if ``cdp.activation.s3_export``
exists, writes each chunk's rows into an ``ExportFileWriter`` on moto's S3). Snapshots go
to moto's S3 and the state item to moto's DynamoDB.

``--destination`` sends each chunk through a real destination instead, as the sync function
does (``DestinationWorker.send_messages`` -> ``Destination.send``): ``s3`` is
``S3ExportDestination`` on moto's S3 (one CSV object per chunk, what the sync function
writes), ``meta`` is ``MetaCustomAudiencesDestination`` posting to a fake Graph API in
another process (bench/activation_fakes.py: its CPU is not ours, it answers at once), one
request of up to 10,000 hashed rows per chunk. Each message gets the profile view the
worker would attach (email trait, identifier and mapped field) built in memory: the
profile reads themselves (``BatchGetItem``, 100 keys a request) are not made here; their
cost per profile is the destination benchmark's (bench/activation.py).

The members index Query is answered, by default, from a sorted list with DynamoDB's
paging and key shapes (``tests/integration/test_batch_sync.py`` checks the stand-in
against moto): moto's Query of an index reads and sorts the whole table for every page
(1.4 s a page at 100,000 items), which would measure moto, not the sync. ``--moto-index``
uses moto's Query anyway (small audiences only).

Printed per sync: wall time, ids merged per second, messages sent, parts, and memory: the
peak traced by ``tracemalloc`` during the sync (``--tracemalloc``; it slows Python down
about twice, so throughput is measured without it unless asked) and the process's
``ru_maxrss`` before and after (which includes the stand-in's list of ids and moto's copy
of everything).
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import os
import resource
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = "cdp-bench-activation"
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


class SortedIndex:
    """A DynamoDB client whose ``members`` index Query pages over a sorted list (see the docstring)."""

    def __init__(self, client: Any, ids: list[str], audience_id: str) -> None:
        self._client = client
        self.ids = ids
        self._audience = audience_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def query(self, **request: Any) -> dict[str, Any]:
        if request.get("IndexName") != "members":
            return dict(self._client.query(**request))
        start = request.get("ExclusiveStartKey")
        after = request["ExpressionAttributeValues"].get(":after")  # a resumed sync's cursor
        first = bisect.bisect_right(self.ids, start["profile_id"]["S"] if start else after["S"] if after else "")
        page = self.ids[first:first + request["Limit"]]
        answer: dict[str, Any] = {"Items": [{"profile_id": {"S": p}} for p in page], "Count": len(page)}
        if first + len(page) < len(self.ids):
            answer["LastEvaluatedKey"] = {"member_of": {"S": self._audience}, "profile_id": {"S": page[-1]},
                                          "audience_id": {"S": self._audience}}
        return answer


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _hwm_mb() -> float | None:
    """This process image's peak RSS (``VmHWM``). Unlike ``ru_maxrss``, which Linux carries
    over from the parent through fork and exec, it starts afresh with the program."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _seed_moto_index(ids: Sequence[str], audience_id: str, removed: Sequence[str] = ()) -> None:
    """Membership items straight into moto's backend (setup speed only)."""
    from moto.dynamodb.models import dynamodb_backends

    from cdp import resources

    table = dynamodb_backends[ACCOUNT][REGION].get_table(resources.MEMBERSHIPS_TABLE.local_name)
    for pid in ids:
        table.put_item({"profile_id": {"S": pid}, "audience_id": {"S": audience_id},
                        "member_of": {"S": audience_id}, "member": {"BOOL": True}})
    for pid in removed:
        table.put_item({"profile_id": {"S": pid}, "audience_id": {"S": audience_id}, "member": {"BOOL": False}})


class FakeDestination:
    """Answers every message "delivered"; with an export writer, writes them as rows first."""

    def __init__(self, writer: Any = None, export: Any = None) -> None:
        self.sent = 0
        self._writer = writer
        self._export = export

    def __call__(self, messages: Sequence[Any]) -> list[Any]:
        from cdp.activation.delivery import Outcome

        if self._writer is not None:
            self._writer.write_rows(self._export.audience_row(
                m.body["profile_id"], m.body["audience_id"], "add" if m.body["transition"] == "entered" else "remove",
                m.body["version"], m.body["at"]) for m in messages)
        self.sent += len(messages)
        return [Outcome("delivered")] * len(messages)


def profile_view(profile_id: str) -> dict[str, Any]:
    """What ``DestinationWorker.views`` attaches to a message (``cdp.activation.enrichment``)."""
    email = f"{profile_id}@example.com"
    return {"profile_id": profile_id, "traits": {"email": email, "plan": "pro"},
            "identifiers": {"email": [email], "user_id": [profile_id]}, "fields": {"email": email}}


class RealDestination:
    """A real destination's ``send``, each message with its profile view (see the docstring)."""

    def __init__(self, destination: Any) -> None:
        self.sent = 0
        self.requests = 0
        self._destination = destination

    def __call__(self, messages: Sequence[Any]) -> list[Any]:
        from cdp.activation.enrichment import with_profile

        outcomes = self._destination.send([with_profile(m, profile_view(m.body["profile_id"])) for m in messages])
        self.sent += len(messages)
        self.requests += 1
        failed = [o for o in outcomes if not o.delivered]
        if failed:
            raise RuntimeError(f"{len(failed)} not delivered: {failed[0].reason}")
        return list(outcomes)


def real_destination(kind: str, s3: Any, graph_url: str | None) -> Any:
    if kind == "s3":
        from cdp.activation.s3_export import S3ExportDestination

        return S3ExportDestination(s3, BUCKET, "bench", prefix="exports", format="csv", clock=lambda: NOW)
    from cdp.activation.meta_audiences import MetaCustomAudiencesDestination

    return MetaCustomAudiencesDestination(access_token="bench-token", base_url=graph_url or "",
                                          audience_ids={"pro": "23851234567890123"})


def _one_sync(label: str, sync: Any, batch: int, s3: Any, use_export: bool, traced: bool,
              destination: Any = None) -> None:
    from cdp.aws.sync_store import sync_status

    writer, export = None, None
    if use_export:
        try:
            export = importlib.import_module("cdp.activation.s3_export")
        except ImportError:
            print("  (cdp.activation.s3_export not available: fake destination only)")
        else:
            writer = export.ExportFileWriter.for_audience(
                s3, bucket=BUCKET, prefix="exports", destination_id="bench", audience_id="pro",
                run_id=label.split(" ")[0] + label.split(" ")[1], kind="incremental", format="csv")
    deliver: Any = FakeDestination(writer, export) if destination is None else RealDestination(destination)
    rss_before = _rss_mb()
    if traced:
        tracemalloc.start()
    started, cpu = time.perf_counter(), time.process_time()
    result = sync.run("bench", "pro", batch, deliver, lambda: 900.0)
    if writer is not None:
        writer.close()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1] if traced else None
    if traced:
        tracemalloc.stop()
    status = sync_status(sync._states._ddb, sync._states._table, "bench", "pro")
    merged = status["counts"]["merged"]
    if isinstance(deliver, RealDestination):
        print(f"  {deliver.requests:,} destination sends")
    print(f"{label}: {result.outcome}, {merged:,} ids merged, {deliver.sent:,} messages "
          f"(adds {status['counts']['adds']:,}, removes {status['counts']['removes']:,}), "
          f"{status['parts']} parts, {status['counts']['members']:,} in the new snapshot")
    print(f"  wall {wall:.2f} s, CPU {cpu:.2f} s, {merged / wall:,.0f} ids/s, "
          f"{deliver.sent / wall:,.0f} messages/s")
    print(f"  memory: tracemalloc peak {peak / 1e6:.2f} MB" if peak is not None else "  memory: (no tracemalloc)",
          f"| ru_maxrss {rss_before:.0f} MB before, {_rss_mb():.0f} MB after"
          + (f" (VmHWM {hwm:.0f} MB)" if (hwm := _hwm_mb()) is not None else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--change", type=float, default=0.01, help="share of members replaced before sync 2")
    parser.add_argument("--batch", type=int, default=10_000, help="destination batch size")
    parser.add_argument("--part-members", type=int, default=50_000)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--moto-index", action="store_true", help="moto's own (slow) index Query")
    parser.add_argument("--s3-export", action="store_true")
    parser.add_argument("--destination", choices=("fake", "s3", "meta"), default="fake",
                        help="deliver through a real destination (see the docstring)")
    args = parser.parse_args(argv)
    if args.destination == "meta":
        from bench.activation_fakes import FakeEndpoint

        with FakeEndpoint() as graph:
            _run(args, graph.url)
            stats = graph.stats()
            print(f"fake Graph API: {stats['requests']:,} requests, {stats['rows']:,} rows, "
                  f"{stats['bytes'] / 1e6:,.1f} MB received")
    else:
        _run(args, None)


def _run(args: argparse.Namespace, graph_url: str | None) -> None:
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": REGION})

    import boto3
    from moto import mock_aws

    from cdp import resources
    from cdp.aws.sync_store import batch_sync
    from cdp.local.provisioning import create_table_request

    with mock_aws():
        ddb, s3 = boto3.client("dynamodb", region_name=REGION), boto3.client("s3", region_name=REGION)
        ddb.create_table(**create_table_request(resources.MEMBERSHIPS_TABLE))
        ddb.create_table(**create_table_request(resources.SEGMENTS_TABLE))
        s3.create_bucket(Bucket=BUCKET)
        ids = [f"prof_{n:010d}" for n in range(args.members)]
        client: Any = ddb
        if args.moto_index:
            _seed_moto_index(ids, "pro")
        else:
            client = SortedIndex(ddb, ids, "pro")
        sync = batch_sync(client, s3, resources.MEMBERSHIPS_TABLE.local_name, resources.SEGMENTS_TABLE.local_name,
                          BUCKET, now=lambda: NOW, part_members=args.part_members)
        destination = real_destination(args.destination, s3, graph_url) if args.destination != "fake" else None
        print(f"{args.members:,} members, batch {args.batch:,}, part {args.part_members:,} ids, "
              f"index: {'moto' if args.moto_index else 'sorted stand-in'}, destination: {args.destination}")
        _one_sync("sync 1 (full)", sync, args.batch, s3, args.s3_export, args.tracemalloc, destination)

        step = max(1, round(1 / args.change)) if args.change > 0 else 0
        removed = ids[::step] if step else []
        added = [f"prof_{n:010d}a" for n in range(0, args.members, step)] if step else []
        current = sorted(set(ids) - set(removed) | set(added))
        if args.moto_index:
            _seed_moto_index(added, "pro", removed)
        else:
            client.ids = current
        del ids, current
        _one_sync(f"sync 2 ({len(removed):,} out, {len(added):,} in)", sync, args.batch, s3, args.s3_export,
                  args.tracemalloc, destination)


if __name__ == "__main__":
    main()
