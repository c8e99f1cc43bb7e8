"""The S3 export destination on moto (one object per batch, keys a retried batch overwrites,
CSV and JSONL read back, error codes) and the streamed export files of batch syncs
(multipart parts, manifest, abort, flat memory)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from cdp.activation import s3_export
from cdp.activation.delivery import OutboundMessage
from cdp.activation.destinations import DestinationConfig
from cdp.activation.s3_export import (
    DEFAULT_PART_SIZE,
    MIB,
    ExportFileWriter,
    S3ExportDestination,
    audience_row,
)

BUCKET = "customer-exports"
LATER = datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC)


def profile(fields: dict[str, Any]) -> dict[str, Any]:
    return {"profile_id": "p", "traits": {"email": "Ana@Example.com", "secret_note": "vip"},
            "identifiers": {"email": ["ana@example.com"]}, "fields": fields}


def change(n: int, fields: dict[str, Any] | None = None, transition: str = "entered",
           at: str = "2026-12-06T12:00:00Z", audience: str = "pro") -> OutboundMessage:
    return OutboundMessage(f"{audience}|p{n}|{transition}|{n}", {
        "kind": "audience_membership", "destination_id": "exports", "message_id": f"m{n}", "audience_id": audience,
        "profile_id": f"p{n}", "transition": transition, "event": "Audience Entered", "version": n, "at": at,
        "profile": profile(fields) if fields is not None else None})


def event(n: int) -> OutboundMessage:
    return OutboundMessage(f"exports:e{n}", {
        "kind": "event", "destination_id": "exports", "message_id": f"e{n}", "profile_id": f"p{n}",
        "triggers": ["pricing-alert"], "profile": profile({"Plan": "pro"}),
        "event": {"type": "track", "event": "Pricing Viewed", "messageId": f"e{n}", "userId": f"u{n}",
                  "timestamp": "2026-12-06T11:59:00Z", "receivedAt": f"2026-12-06T12:0{n}:00Z",
                  "properties": {"plan": "pro", "seats": n}}})


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def keys(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def text(s3: Any, key: str) -> str:
    return str(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8"))


def test_a_batch_of_audience_changes_is_one_csv_object_with_the_mapped_fields_only(s3: Any) -> None:
    destination = S3ExportDestination(s3, BUCKET, "exports", prefix="cdp", format="csv")
    batch = [change(1, {"Plan": "pro", "Note": 'says "hi", then\nleaves'}, at="2026-12-06T12:05:00Z"),
             change(2, {"Company": "Acme", "action": "not the action"}, transition="exited"),
             change(3, None)]  # the profile no longer exists

    assert all(o.delivered for o in destination.send(batch))

    [key] = keys(s3)
    assert re.fullmatch(r"cdp/exports/incremental/pro/dt=2026-12-06/20261206T120500Z-[0-9a-f]{32}\.csv", key)
    obj = s3.get_object(Bucket=BUCKET, Key=key)
    assert obj["ContentType"].startswith("text/csv")
    raw = obj["Body"].read().decode()
    assert raw.startswith("profile_id,audience_id,action,version,at,Company,Note,Plan,fields.action\r\n")
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    assert rows[0] == {"profile_id": "p1", "audience_id": "pro", "action": "add", "version": "1",
                       "at": "2026-12-06T12:05:00Z", "Company": "", "Note": 'says "hi", then\nleaves', "Plan": "pro",
                       "fields.action": ""}
    assert rows[1]["action"] == "remove" and rows[1]["fields.action"] == "not the action"
    assert rows[2]["profile_id"] == "p3" and rows[2]["Plan"] == ""
    assert "Ana@Example.com" not in raw and "vip" not in raw


def test_events_go_to_their_own_jsonl_object_with_the_whole_event(s3: Any) -> None:
    destination = S3ExportDestination(s3, BUCKET, "exports", prefix="cdp/")
    outcomes = destination.send([change(1, {"Plan": "pro"}), event(1), event(2), change(2, {})])

    assert all(o.delivered for o in outcomes)
    events_key, audience_key = keys(s3)
    assert audience_key.startswith("cdp/exports/incremental/pro/dt=2026-12-06/20261206T120000Z-")
    assert re.fullmatch(r"cdp/exports/incremental/events/dt=2026-12-06/20261206T120200Z-[0-9a-f]{32}\.jsonl",
                        events_key)  # the latest receivedAt
    raw = text(s3, events_key)
    assert raw.endswith("\n") and ", " not in raw and ": " not in raw  # compact, one object a line
    lines = [json.loads(line) for line in raw.splitlines()]
    assert lines[0] == {"message_id": "e1", "profile_id": "p1", "triggers": ["pricing-alert"],
                        "event": event(1).body["event"], "Plan": "pro"}
    members = [json.loads(line) for line in text(s3, audience_key).splitlines()]
    assert members == [
        {"profile_id": "p1", "audience_id": "pro", "action": "add", "version": 1, "at": "2026-12-06T12:00:00Z",
         "Plan": "pro"},
        {"profile_id": "p2", "audience_id": "pro", "action": "add", "version": 2, "at": "2026-12-06T12:00:00Z"}]
    assert "Ana@Example.com" not in raw


def test_events_in_csv_are_one_row_each_with_properties_as_json(s3: Any) -> None:
    S3ExportDestination(s3, BUCKET, "exports", format="csv").send([event(1)])
    [key] = keys(s3)
    assert key.startswith("exports/incremental/events/dt=2026-12-06/")
    [row] = list(csv.DictReader(io.StringIO(text(s3, key), newline="")))
    assert row == {"message_id": "e1", "profile_id": "p1", "event": "Pricing Viewed",
                   "timestamp": "2026-12-06T11:59:00Z", "properties": '{"plan":"pro","seats":1}', "Plan": "pro"}


def test_a_retried_batch_overwrites_its_own_object(s3: Any) -> None:
    first = S3ExportDestination(s3, BUCKET, "exports", clock=lambda: datetime(2026, 12, 6, tzinfo=UTC))
    later = S3ExportDestination(s3, BUCKET, "exports", clock=lambda: LATER)  # the retry, a day later
    batch = [change(1, {}), change(2, {})]

    first.send(batch)
    later.send(list(reversed(batch)))
    assert len(keys(s3)) == 1
    later.send([change(3, {})])
    assert len(keys(s3)) == 2
    # no time in any message: the clock's
    undated = OutboundMessage("x", {**change(4, {}).body, "at": None})
    later.send([undated])
    assert any("/dt=2027-01-02/20270102T030405Z-" in k for k in keys(s3))


def test_the_expected_bucket_owner_is_sent_and_encryption_left_to_the_bucket(s3: Any) -> None:
    calls: list[dict[str, Any]] = []
    s3.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: calls.append(params))
    assert S3ExportDestination(s3, BUCKET, "exports", expected_bucket_owner="123456789012").send(
        [change(1, {})])[0].delivered  # moto's account owns the bucket
    assert calls[0]["ExpectedBucketOwner"] == "123456789012"
    assert not any(k.startswith("ServerSideEncryption") or k.startswith("SSEKMS") for k in calls[0])


def test_a_missing_bucket_is_dead_lettered_naming_the_code_only(s3: Any) -> None:
    outcomes = S3ExportDestination(s3, "no-such-bucket-here", "exports").send([change(1, {}), change(2, {})])
    assert [o.verdict for o in outcomes] == ["permanent", "permanent"]
    assert outcomes[0].reason == "PutObject: NoSuchBucket"


class FailingS3:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def put_object(self, **_: Any) -> None:
        raise self.error


@pytest.mark.parametrize(("code", "status", "verdict"), [
    ("SlowDown", 503, "retry"), ("ServiceUnavailable", 503, "retry"), ("InternalError", 500, "retry"),
    ("503", 503, "retry"), ("AccessDenied", 403, "permanent"), ("NoSuchBucket", 404, "permanent"),
    ("KMS.DisabledException", 400, "permanent"),
])
def test_request_errors_are_retried_or_dead_lettered_by_code(code: str, status: int, verdict: str) -> None:
    error = ClientError({"Error": {"Code": code, "Message": f"bucket {BUCKET} key p1"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    outcomes = S3ExportDestination(FailingS3(error), BUCKET, "exports").send([change(1, {}), event(2)])
    assert [o.verdict for o in outcomes] == [verdict, verdict]
    assert outcomes[0].reason == f"PutObject: {code}"


def test_a_message_that_is_neither_a_change_nor_an_event_is_dead_lettered(s3: Any) -> None:
    outcomes = S3ExportDestination(s3, BUCKET, "exports").send([OutboundMessage("x", {"kind": "other"}),
                                                                change(1, {})])
    assert [o.verdict for o in outcomes] == ["permanent", "delivered"]


def test_build_reads_the_bucket_prefix_and_format() -> None:
    config = DestinationConfig.model_validate({
        "id": "warehouse", "name": "Warehouse", "type": "s3", "audiences": ["pro"],
        "settings": {"bucket": BUCKET, "prefix": "cdp/", "format": "csv"}})
    destination = s3_export.build(config, lambda name: "", lambda service: f"{service} client")
    assert isinstance(destination, S3ExportDestination)
    assert (destination.s3, destination.bucket, destination.prefix, destination.format, destination.destination_id) \
        == ("s3 client", BUCKET, "cdp/", "csv", "warehouse")


# --- streamed export files -------------------------------------------------------------

def member_rows(count: int, width: int = 0) -> Iterator[dict[str, Any]]:
    for n in range(count):
        yield audience_row(f"p{n}", "pro", "add", n, "2026-12-06T12:00:00Z",
                           {"Plan": "pro", "Note": "x" * width, "Seats": n})


def test_a_small_full_export_is_one_object_then_its_manifest(s3: Any) -> None:
    writer = ExportFileWriter.for_audience(s3, bucket=BUCKET, prefix="cdp", destination_id="warehouse",
                                           audience_id="pro", run_id="2026-12-06T12-00-00Z", kind="full",
                                           format="csv", field_names=["Seats", "Plan", "Note"],
                                           clock=lambda: LATER)
    assert writer.part_size == DEFAULT_PART_SIZE == 8 * MIB  # the real default: parts of 8 MiB
    with writer:
        writer.write_rows(member_rows(3))
        writer.write_rows(iter([audience_row("p,9", "pro", "remove", None, None, {"Note": 'a "b"'})]))
        result = writer.close()

    key = "cdp/warehouse/full/pro/2026-12-06T12-00-00Z.csv"
    assert result == (key, 4, len(text(s3, key).encode()))
    assert keys(s3) == [key, "cdp/warehouse/full/pro/2026-12-06T12-00-00Z.manifest.json"]
    rows = list(csv.DictReader(io.StringIO(text(s3, key), newline="")))
    assert [r["profile_id"] for r in rows] == ["p0", "p1", "p2", "p,9"]
    assert rows[3] == {"profile_id": "p,9", "audience_id": "pro", "action": "remove", "version": "", "at": "",
                       "Note": 'a "b"', "Plan": "", "Seats": ""}
    manifest = json.loads(text(s3, "cdp/warehouse/full/pro/2026-12-06T12-00-00Z.manifest.json"))
    assert manifest == {"file": "2026-12-06T12-00-00Z.csv", "key": key, "kind": "full", "format": "csv",
                        "columns": ["profile_id", "audience_id", "action", "version", "at", "Note", "Plan", "Seats"],
                        "row_count": 4, "bytes": result.bytes, "header_row": True,
                        "created_at": "2027-01-02T03:04:05Z"}


def test_a_large_sync_file_is_uploaded_in_parts_and_reads_back_whole(s3: Any) -> None:
    parts: list[int] = []
    s3.meta.events.register("before-parameter-build.s3.UploadPart",
                            lambda params, **_: parts.append(len(params["Body"])))
    completed: list[dict[str, Any]] = []
    s3.meta.events.register("before-parameter-build.s3.CompleteMultipartUpload",
                            lambda params, **_: completed.append(params["MultipartUpload"]))
    with pytest.raises(ValueError, match="at least"):
        ExportFileWriter(s3, BUCKET, "k.csv", ["profile_id"], part_size=MIB)  # S3 refuses parts under 5 MiB
    writer = ExportFileWriter.for_audience(s3, bucket=BUCKET, prefix="", destination_id="warehouse",
                                           audience_id="pro", run_id="run-7", kind="incremental", format="jsonl",
                                           field_names=["Plan", "Note", "Seats"], part_size=5 * MIB)
    writer.write_rows(member_rows(11_000, width=1_000))
    key, rows, size = writer.close()

    assert key == "warehouse/sync/pro/run-7.jsonl" and rows == 11_000 and size > 10 * MIB
    assert len(parts) == 3 and all(p >= 5 * MIB for p in parts[:-1]) and sum(parts) == size
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == size and head["ETag"].endswith('-3"')  # a multipart object
    # each part's CRC32 (the upload was started with that algorithm) is listed on completion
    assert [sorted(p) for p in completed[0]["Parts"]] == [["ChecksumCRC32", "ETag", "PartNumber"]] * 3
    lines = text(s3, key).splitlines()
    assert len(lines) == 11_000 and json.loads(lines[10_999])["profile_id"] == "p10999"
    assert json.loads(lines[5])["Seats"] == 5
    manifest = json.loads(text(s3, "warehouse/sync/pro/run-7.manifest.json"))
    assert (manifest["kind"], manifest["format"], manifest["row_count"]) == ("incremental", "jsonl", 11_000)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_failure_while_writing_aborts_the_upload_and_leaves_no_object(s3: Any) -> None:
    def rows_then_failure() -> Iterator[dict[str, Any]]:
        yield from member_rows(7_000, width=1_000)  # more than one 5 MiB part
        raise OSError("the audience's pages could not be read")

    writer = ExportFileWriter(s3, BUCKET, "warehouse/full/pro/r1.csv", s3_export.audience_columns(["Plan", "Note",
                                                                                                  "Seats"]),
                              part_size=5 * MIB)
    with pytest.raises(OSError), writer:
        writer.write_rows(rows_then_failure())
    assert keys(s3) == [] and s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    with pytest.raises(RuntimeError, match="aborted"):
        writer.write_rows(member_rows(1))


def test_a_failed_part_upload_aborts_by_itself(s3: Any) -> None:
    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "UploadPart")

    aborted: list[str] = []
    s3.meta.events.register("before-call.s3.UploadPart", refuse)
    s3.meta.events.register("before-parameter-build.s3.AbortMultipartUpload",
                            lambda params, **_: aborted.append(params["UploadId"]))
    writer = ExportFileWriter(s3, BUCKET, "warehouse/full/pro/r2.jsonl", s3_export.audience_columns(["Note"]),
                              format="jsonl", part_size=5 * MIB)
    with pytest.raises(ClientError):
        writer.write_rows(audience_row(f"p{n}", "pro", "add", n, None, {"Note": "y" * 1_000}) for n in range(6_000))
    assert len(aborted) == 1 and keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_file_whose_manifest_cannot_be_written_is_removed(s3: Any) -> None:
    def refuse_manifest(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith(".manifest.json"):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")

    s3.meta.events.register("before-parameter-build.s3.PutObject", refuse_manifest)
    writer = ExportFileWriter(s3, BUCKET, "warehouse/full/pro/r3.csv", ["profile_id"])
    writer.write_rows([{"profile_id": "p1"}])
    with pytest.raises(ClientError):
        writer.close()
    assert keys(s3) == []


class CountingS3:
    """Keeps only the sizes of what it is sent: the writer's memory is all that is measured
    (moto would keep the whole file in memory)."""

    def __init__(self) -> None:
        self.parts: list[int] = []
        self.completed: list[dict[str, Any]] = []

    def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {"UploadId": "u1"}

    def upload_part(self, Body: bytes, PartNumber: int, **_: Any) -> dict[str, Any]:
        self.parts.append(len(Body))
        return {"ETag": f'"{PartNumber}"'}

    def complete_multipart_upload(self, MultipartUpload: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.completed.append(MultipartUpload)
        return {}

    def put_object(self, **_: Any) -> dict[str, Any]:
        return {}


def test_memory_stays_flat_while_a_30_mb_file_streams_out() -> None:
    fake = CountingS3()
    payload = "z" * 2_000
    started = time.monotonic()
    tracemalloc.start()
    try:
        writer = ExportFileWriter(fake, BUCKET, "warehouse/full/pro/big.csv", ["profile_id", "Note"],
                                  part_size=5 * MIB)
        writer.write_rows({"profile_id": f"p{n}", "Note": payload} for n in range(15_500))
        _, rows, size = writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert size > 30_000_000 and rows == 15_500 and sum(fake.parts) == size
    assert len(fake.parts) == 6 and len(fake.completed[0]["Parts"]) == 6
    assert peak < 2 * 5 * MIB and peak < size / 4  # about one part in memory (handed over, not copied), not the file
    assert time.monotonic() - started < 5
