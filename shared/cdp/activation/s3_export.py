"""The Amazon S3 export destination: audience changes and events as files in a customer's
bucket, for warehouses and tools that import files.

Layout, under the destination's ``prefix`` (a ``/`` is added when it lacks one):

- ``{destination_id}/incremental/{audience_id}/dt=YYYY-MM-DD/{time}-{hash}.{csv|jsonl}``:
  the real-time changes, one object per ``send`` (per audience of the batch; triggered
  events under ``events`` instead of an audience id). ``time`` (``YYYYMMDDTHHMMSSZ``,
  UTC) and ``dt`` are the latest change time of the batch's messages (an audience
  change's ``at``, an event's ``receivedAt``/``timestamp``; the clock only when no
  message has one), ``hash`` a digest of the batch's sorted deduplication ids. Both are
  properties of the messages, not of the attempt, so **a batch sent again overwrites its
  own object instead of adding a copy**. A retry that regroups messages differently (the
  queue hands out other batches) writes another object that repeats some rows; each row
  carries what identifies it (``profile_id``, ``audience_id``, ``action``, ``version``;
  an event's ``message_id``), so importers drop repeats by those.
- ``{destination_id}/full/{audience_id}/{run_id}.{ext}``: a batch sync's full member list
  (``cdp.aws.full_export``, after each successful sync; ``run_id`` is the sync's id),
  streamed by :class:`ExportFileWriter` (a multipart upload, flat memory) and followed by
  ``{run_id}.manifest.json`` (row count, columns, format, kind, created_at): a file is
  complete once its manifest exists. A batch sync's adds and removes go through ``send``
  like real-time changes (incremental objects, one per chunk). ``ExportFileWriter`` can
  also write a ``sync/`` file (kind ``incremental``); nothing uses that yet.

Rows. An audience change: ``profile_id``, ``audience_id``, ``action`` (``add`` /
``remove``), ``version``, ``at``, then the mapped fields (the profile's ``fields``: the
destination's field mapping applied; columns sorted, the union over the file; a field
named like a fixed column is written as ``fields.<name>``). Raw traits and identifiers
are never written. An event in JSONL: ``message_id``, ``profile_id``, ``triggers`` and the
whole ``event`` (as the router forwards it), then the mapped fields; in CSV:
``message_id``, ``profile_id``, ``event`` (its name), ``timestamp``, ``properties`` (JSON),
then the mapped fields. CSV is RFC 4180 (the ``csv`` module: CRLF, quoting where needed)
with a header row; nested values are compact JSON, booleans ``true``/``false``, nulls
empty. JSONL is one compact JSON object per line (UTF-8).

Encryption: objects take the bucket's default encryption (nothing is set here);
``expected_bucket_owner`` (an account id), when given, is sent with every request so a
bucket that changed hands is refused (``AccessDenied``) instead of written to.

Answers (``send``): throttling (``SlowDown``) and server errors (5xx) are retried; any
other error (``AccessDenied``, ``NoSuchBucket``, a KMS key problem) is dead-lettered;
reasons name the error code only.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from cdp.activation.delivery import Destination, OutboundMessage, Outcome
from cdp.activation.destinations import DestinationConfig, S3Settings

ExportFormat = Literal["csv", "jsonl"]
ExportKind = Literal["full", "incremental"]

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB  # S3: every part but the last is at least 5 MiB
MAX_PARTS = 10_000  # S3: part numbers 1 to 10,000
_DRAIN_CHARS = 64 * 1024  # text encoded into the part buffer in pieces of about this size

AUDIENCE_COLUMNS = ("profile_id", "audience_id", "action", "version", "at")
EVENT_CSV_COLUMNS = ("message_id", "profile_id", "event", "timestamp", "properties")
EVENT_JSONL_COLUMNS = ("message_id", "profile_id", "triggers", "event")
ACTIONS: dict[str, Literal["add", "remove"]] = {"entered": "add", "exited": "remove"}
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8; header=present", "jsonl": "application/x-ndjson"}
EVENTS_FOLDER = "events"
RETRYABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                             "Throttling", "ThrottlingException", "RequestThrottled", "OperationAborted"})
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --- rows ----------------------------------------------------------------------------

def field_columns(fixed: Sequence[str], names: Iterable[str]) -> list[str]:
    """The columns of mapped fields after ``fixed``: sorted, a name that is also a fixed
    column prefixed ``fields.``."""
    return [f"fields.{name}" if name in fixed else name for name in sorted(set(names))]


def _with_fields(row: dict[str, Any], fixed: Sequence[str], fields: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in fields.items():
        row[f"fields.{name}" if name in fixed else name] = value
    return row


def audience_columns(field_names: Iterable[str]) -> list[str]:
    """The columns of an audience file whose rows carry these mapped fields."""
    return [*AUDIENCE_COLUMNS, *field_columns(AUDIENCE_COLUMNS, field_names)]


def audience_row(profile_id: str, audience_id: str, action: Literal["add", "remove"], version: int | None,
                 at: str | None, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One row of an audience file (incremental, sync or full)."""
    row: dict[str, Any] = {"profile_id": profile_id, "audience_id": audience_id, "action": action,
                           "version": version, "at": at}
    return _with_fields(row, AUDIENCE_COLUMNS, fields or {})


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):  # DynamoDB numbers
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, Decimal):
        return str(_json_default(value))
    return _json(value)


class _RowText:
    """Rows turned into text in one format, with a fixed column list (the CSV header is
    written first). ``take()`` hands over the text so far."""

    def __init__(self, columns: Sequence[str], format: ExportFormat) -> None:
        if not columns or len(set(columns)) != len(columns):
            raise ValueError("columns: at least one, each once")
        if format not in CONTENT_TYPES:
            raise ValueError(f"format: csv or jsonl, not {format!r}")
        self.columns = list(columns)
        self.format = format
        self._known = frozenset(columns)
        self._text = io.StringIO()
        self._csv = csv.writer(self._text) if format == "csv" else None
        if self._csv is not None:
            self._csv.writerow(self.columns)

    def write(self, row: Mapping[str, Any]) -> None:
        unknown = row.keys() - self._known
        if unknown:  # a programming error: the columns are declared before the first row
            raise ValueError(f"row has undeclared columns: {sorted(unknown)}")
        if self._csv is not None:
            self._csv.writerow([_cell(row.get(c)) for c in self.columns])
        else:
            self._text.write(_json({c: row[c] for c in self.columns if c in row}))
            self._text.write("\n")

    def pending(self) -> int:
        return self._text.tell()

    def take(self) -> bytes:
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        return data


# --- errors --------------------------------------------------------------------------

def s3_outcome(operation: str, exc: Exception) -> Outcome:
    """What a failed S3 request means: throttles and server errors retried, anything else
    dead-lettered; the reason names the code only (never the bucket, key or content)."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "ClientError")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        retry = code in RETRYABLE_CODES or status >= 500 or code == "503"
        return Outcome("retry" if retry else "permanent", f"{operation}: {code}")
    return Outcome("retry", f"no answer: {type(exc).__name__}")


def _owner(expected_bucket_owner: str | None) -> dict[str, str]:
    return {"ExpectedBucketOwner": expected_bucket_owner} if expected_bucket_owner else {}


def _folder(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- real-time incremental objects ---------------------------------------------------

def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _fields(body: Mapping[str, Any]) -> Mapping[str, Any]:
    profile = body.get("profile")
    fields = profile.get("fields") if isinstance(profile, Mapping) else None
    return fields if isinstance(fields, Mapping) else {}


def _event_name(event: Mapping[str, Any]) -> Any:
    return event.get("event") or event.get("name") or event.get("type")


@dataclass
class S3ExportDestination:
    s3: Any  # a boto3 S3 client
    bucket: str
    destination_id: str
    prefix: str = ""
    format: ExportFormat = "jsonl"
    expected_bucket_owner: str | None = None
    clock: Callable[[], datetime] = field(default=_utcnow, repr=False)

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        groups: dict[str, list[int]] = {}
        for n, message in enumerate(messages):
            body = message.body
            kind = body.get("kind")
            if kind == "audience_membership" and isinstance(body.get("profile_id"), str) \
                    and isinstance(body.get("audience_id"), str) and body.get("transition") in ACTIONS:
                groups.setdefault(str(body["audience_id"]), []).append(n)
            elif kind == "event" and isinstance(body.get("event"), Mapping):
                groups.setdefault(EVENTS_FOLDER, []).append(n)
            else:
                outcomes[n] = Outcome("permanent", "not an audience change or an event")
        for folder, members in groups.items():
            batch = [messages[n] for n in members]
            outcome = self._put(folder, batch)
            for n in members:
                outcomes[n] = outcome
        return [o if o is not None else Outcome("retry", "not sent") for o in outcomes]

    def object_key(self, folder: str, batch: Sequence[OutboundMessage]) -> str:
        """The key of one batch's object: a function of its messages only (module docstring)."""
        moments = [m for m in (_moment(self._time_of(message.body)) for message in batch) if m is not None]
        moment = max(moments) if moments else self.clock().astimezone(UTC)
        digest = hashlib.sha256("\n".join(sorted(m.deduplication_id for m in batch)).encode()).hexdigest()[:32]
        return (f"{_folder(self.prefix)}{self.destination_id}/incremental/{folder}/"
                f"dt={moment:%Y-%m-%d}/{moment:%Y%m%dT%H%M%SZ}-{digest}.{self.format}")

    @staticmethod
    def _time_of(body: Mapping[str, Any]) -> Any:
        if body.get("kind") == "event":
            event = body.get("event")
            return event.get("receivedAt") or event.get("timestamp") if isinstance(event, Mapping) else None
        return body.get("at")

    def rows(self, folder: str, batch: Sequence[OutboundMessage]) -> tuple[list[str], list[dict[str, Any]]]:
        """The columns and rows of one batch's object."""
        names = {name for message in batch for name in _fields(message.body)}
        rows: list[dict[str, Any]] = []
        if folder != EVENTS_FOLDER:
            for message in batch:
                body = message.body
                rows.append(audience_row(body["profile_id"], body["audience_id"], ACTIONS[body["transition"]],
                                         body.get("version"), body.get("at"), _fields(body)))
            return audience_columns(names), rows
        fixed = EVENT_CSV_COLUMNS if self.format == "csv" else EVENT_JSONL_COLUMNS
        for message in batch:
            body, event = message.body, message.body["event"]
            if self.format == "csv":
                row = {"message_id": body.get("message_id"), "profile_id": body.get("profile_id"),
                       "event": _event_name(event), "timestamp": event.get("timestamp"),
                       "properties": _json(event.get("properties") or {})}
            else:
                row = {"message_id": body.get("message_id"), "profile_id": body.get("profile_id"),
                       "triggers": body.get("triggers") or [], "event": dict(event)}
            rows.append(_with_fields(row, fixed, _fields(body)))
        return [*fixed, *field_columns(fixed, names)], rows

    def _put(self, folder: str, batch: Sequence[OutboundMessage]) -> Outcome:
        columns, rows = self.rows(folder, batch)
        text = _RowText(columns, self.format)
        for row in rows:
            text.write(row)
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self.object_key(folder, batch), Body=text.take(),
                               ContentType=CONTENT_TYPES[self.format], **_owner(self.expected_bucket_owner))
        except (ClientError, BotoCoreError) as exc:
            return s3_outcome("PutObject", exc)
        return Outcome("delivered")


# --- streamed files for batch syncs --------------------------------------------------

class ExportedFile(NamedTuple):
    key: str
    rows: int
    bytes: int


def export_key(prefix: str, destination_id: str, kind: ExportKind, audience_id: str, run_id: str,
               format: ExportFormat) -> str:
    """``{prefix}{destination_id}/full|sync/{audience_id}/{run_id}.{format}``."""
    if not _RUN_ID.match(run_id):
        raise ValueError("run_id: letters, digits, '.', '_' and '-' (at most 128)")
    folder = "full" if kind == "full" else "sync"
    return f"{_folder(prefix)}{destination_id}/{folder}/{audience_id}/{run_id}.{format}"


def manifest_key(key: str) -> str:
    """The manifest next to a file: its extension replaced by ``.manifest.json``."""
    stem, dot, _ = key.rpartition(".")
    return f"{stem if dot else key}.manifest.json"


@dataclass
class ExportFileWriter:
    """A CSV or JSONL file streamed into S3: rows are encoded as they come and sent as
    parts of at least ``part_size`` bytes (a multipart upload started with the first full
    part; a file smaller than one part is a single ``PutObject``), so memory holds about
    one part whatever the file's size (a full part's buffer is handed to ``UploadPart``,
    not copied). ``close()`` completes the upload and then writes the manifest;
    ``abort()`` (also on any failed S3 call, and on leaving a ``with`` block not closed)
    aborts the upload, so no partial object is left. Failures raise
    (a batch sync is checkpointed and runs again); they are not destination outcomes."""

    s3: Any  # a boto3 S3 client
    bucket: str
    key: str
    columns: Sequence[str]
    format: ExportFormat = "csv"
    kind: ExportKind = "full"
    part_size: int = DEFAULT_PART_SIZE
    expected_bucket_owner: str | None = None
    clock: Callable[[], datetime] = field(default=_utcnow, repr=False)

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size: at least {MIN_PART_SIZE} bytes (S3's smallest part)")
        self._text = _RowText(self.columns, self.format)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._state: Literal["open", "closed", "aborted"] = "open"
        self.rows = 0
        self.bytes = 0

    @classmethod
    def for_audience(cls, s3: Any, *, bucket: str, prefix: str, destination_id: str, audience_id: str,
                     run_id: str, kind: ExportKind, format: ExportFormat, field_names: Iterable[str] = (),
                     **options: Any) -> ExportFileWriter:
        """The writer of a batch sync's audience file (``kind`` full: every member;
        incremental: the adds and removes), rows from :func:`audience_row`."""
        return cls(s3, bucket, export_key(prefix, destination_id, kind, audience_id, run_id, format),
                   audience_columns(field_names), format=format, kind=kind, **options)

    def __enter__(self) -> ExportFileWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._state == "open":  # an exception, or a block left without close(): incomplete
            self.abort()

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write rows (dicts keyed by ``columns``; a missing column is empty/absent).
        Returns how many were written by this call."""
        self._check_open()
        written = 0
        for row in rows:
            self._text.write(row)
            written += 1
            self.rows += 1
            if self._text.pending() >= _DRAIN_CHARS:
                self._drain()
        return written

    def close(self) -> ExportedFile:
        """Complete the file, then write its manifest; returns (key, rows, bytes)."""
        self._check_open()
        self._drain(final=True)
        extra = _owner(self.expected_bucket_owner)
        try:
            if self._upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer),
                                   ContentType=CONTENT_TYPES[self.format], **extra)
            else:
                if self._buffer:
                    self._upload_part()
                self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                                  MultipartUpload={"Parts": self._parts}, **extra)
            self._buffer = bytearray()
        except BaseException:
            self.abort()
            raise
        try:
            self.s3.put_object(Bucket=self.bucket, Key=manifest_key(self.key), Body=self.manifest().encode(),
                               ContentType="application/json", **extra)
        except BaseException:
            # a file without its manifest is incomplete to importers; do not leave it behind
            self._state = "aborted"
            with contextlib.suppress(ClientError, BotoCoreError):
                self.s3.delete_object(Bucket=self.bucket, Key=self.key, **extra)
            raise
        self._state = "closed"
        return ExportedFile(self.key, self.rows, self.bytes)

    def manifest(self) -> str:
        """The manifest's JSON: what an importer checks before it reads the file."""
        return json.dumps({
            "file": self.key.rpartition("/")[2], "key": self.key, "kind": self.kind, "format": self.format,
            "columns": list(self.columns), "row_count": self.rows, "bytes": self.bytes,
            "header_row": self.format == "csv",
            "created_at": self.clock().astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }, indent=2)

    def abort(self) -> None:
        """Give the file up: the multipart upload (if started) is aborted, its parts freed."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer = bytearray()
        if self._upload_id is not None:
            # on failure, the bucket's lifecycle rule for incomplete uploads is the backstop
            with contextlib.suppress(ClientError, BotoCoreError):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                               **_owner(self.expected_bucket_owner))

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"export file is {self._state}")

    def _drain(self, final: bool = False) -> None:
        data = self._text.take()
        self._buffer += data
        self.bytes += len(data)
        if len(self._buffer) >= self.part_size and not final:
            try:
                self._upload_part()
            except BaseException:
                self.abort()
                raise

    def _upload_part(self) -> None:
        extra = _owner(self.expected_bucket_owner)
        if self._upload_id is None:
            started = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key, ChecksumAlgorithm="CRC32",
                                                      ContentType=CONTENT_TYPES[self.format], **extra)
            self._upload_id = str(started["UploadId"])
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise RuntimeError(f"over S3's {MAX_PARTS} parts: use a larger part_size")
        body, self._buffer = self._buffer, bytearray()  # handed over, not copied
        answer = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
                                     Body=body, ChecksumAlgorithm="CRC32", **extra)
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        if answer.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = answer["ChecksumCRC32"]
        self._parts.append(part)


def build(config: DestinationConfig, secret: Callable[[str], str], aws: Callable[[str], Any]) -> Destination:
    """The real-time destination of an ``s3`` configuration (no secret: the Lambda's role
    may write to the bucket, by the bucket's policy when it is another account's)."""
    settings = config.settings
    if not isinstance(settings, S3Settings):
        raise TypeError(f"destination {config.id!r} is not an s3 destination")
    return S3ExportDestination(aws("s3"), settings.bucket, config.id, prefix=settings.prefix,
                               format=settings.format)


if TYPE_CHECKING:  # the one destination interface, checked by mypy
    _INTERFACE: Destination = S3ExportDestination(s3=None, bucket="b", destination_id="d")
