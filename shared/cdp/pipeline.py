"""The stream consumer's work on one Kinesis batch.

1. Decode each record (docs/record-format.md). Records that can never succeed
   (undecodable, unknown version, invalid event, or refused by the collector) go to
   the quarantine, in S3 and the quarantine table: they count as handled, so a
   poison record never blocks its shard.
2. Record each event in the history (the events table), which dedupes it: an event
   whose key is already there, written by another record, is a duplicate and skipped
   (``cdp.aws.event_store``).
3. Run the stages on the new events, in stream order: archive to S3, then the
   unification stage (``cdp.unification``). On failure, remove what step 2 wrote, so a
   copy sent again later is not refused.

A failing step fails the records it was working on, and only those; the handler
reports them as batch item failures and Lambda retries them. Every step is
idempotent, so the retry converges.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cdp.aws.archive import archive_key
from cdp.aws.event_store import HistoryEntry, dedupe_key
from cdp.ingest import RECORD_VERSION, normalize_event, validate_event
from cdp.observability import logger
from cdp.segment import RejectedEvent
from cdp.segmentation.tallies import StreamPosition

UNKNOWN_SOURCE = "unknown"
MAX_SOURCE_ID_LENGTH = 128


@dataclass(frozen=True)
class InboundRecord:
    """One Kinesis record as the event source mapping delivers it."""

    shard_id: str
    sequence_number: str
    arrival: float  # approximateArrivalTimestamp, epoch seconds
    data: bytes
    partition_key: str = ""

    @property
    def position(self) -> StreamPosition:
        """Where the record sits in its partition key's order (folds aggregates once)."""
        return StreamPosition.of(self.shard_id, self.partition_key, self.sequence_number)

    @property
    def owner(self) -> str:
        return f"{self.shard_id}:{self.sequence_number}"


@dataclass
class AcceptedEvent:
    record: InboundRecord
    source_id: str
    event: dict[str, Any]
    raw: Any
    redrive_of: str | None = None  # the record this one is a DLQ redrive of

    @property
    def dedupe_key(self) -> tuple[str, str]:
        return dedupe_key(self.event)

    def entry(self) -> HistoryEntry:
        return HistoryEntry(self.source_id, self.event, self.record.owner, self.redrive_of)


@dataclass
class QuarantinedRecord:
    record: InboundRecord
    source_id: str
    received_at: str
    reason: str
    raw: Any
    field: str | None = None
    index: int | None = None
    message_id: str | None = None

    def entry(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "received_at": self.received_at,
            "record_id": hashlib.sha256(self.record.owner.encode()).hexdigest()[:16],
            "reason": self.reason,
            "field": self.field,
            "index": self.index,
            "message_id": self.message_id,
            "raw": self.raw,
        }


class Archive(Protocol):
    def write(self, key: str, lines: list[dict[str, Any]]) -> None: ...


class History(Protocol):
    """Records events once (``cdp.aws.event_store.HistoryStore``)."""

    def claim(self, entries: list[HistoryEntry]) -> Any: ...
    def release(self, entries: list[HistoryEntry]) -> None: ...


class EventStage(Protocol):
    """A step run on the newly claimed events of a batch, in stream order: each as
    (source id, event, stream position)."""

    def store(self, events: list[tuple[str, dict[str, Any], StreamPosition | None]]) -> None: ...


class Quarantine(Protocol):
    def store(self, entries: list[dict[str, Any]], archive_key: str) -> None: ...


@dataclass
class BatchOutcome:
    failed: dict[str, str] = field(default_factory=dict)  # owner -> why
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _short_text(value: Any, limit: int = 1024) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _valid_iso(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value


def decode(record: InboundRecord) -> AcceptedEvent | QuarantinedRecord:
    """Turn a record into an event to store, or a quarantine entry saying why not."""
    arrival = _iso(record.arrival)

    def refuse(reason: str, raw: Any, source_id: str = UNKNOWN_SOURCE, **extra: Any) -> QuarantinedRecord:
        return QuarantinedRecord(record, source_id, arrival, reason, raw, **extra)

    try:
        envelope = json.loads(record.data)
    except (ValueError, UnicodeDecodeError):
        return refuse("record is not JSON", base64.b64encode(record.data).decode("ascii"))
    if not isinstance(envelope, dict) or envelope.get("v") != RECORD_VERSION:
        return refuse(f"unknown record format; expected an object with v={RECORD_VERSION}", envelope)
    source_id = envelope.get("source_id")
    if not isinstance(source_id, str) or not source_id.strip() or len(source_id) > MAX_SOURCE_ID_LENGTH:
        return refuse(f"record needs a source_id of 1 to {MAX_SOURCE_ID_LENGTH} characters", envelope)
    kind = envelope.get("kind")
    if kind == "rejected":
        rejection = envelope.get("rejection") or {}
        if not isinstance(rejection, dict):
            rejection = {}
        return QuarantinedRecord(
            record, source_id, _valid_iso(envelope.get("received_at")) or arrival,
            _short_text(rejection.get("reason")) or "refused by the collector", envelope.get("raw"),
            field=_short_text(rejection.get("field")),
            index=rejection["index"] if type(rejection.get("index")) is int else None,
            message_id=_short_text(rejection.get("messageId")),
        )
    if kind != "event":
        return refuse(f"unknown record kind {kind!r}", envelope, source_id)
    event = envelope.get("event")
    raw = envelope.get("raw", event)
    checked = validate_event(event, None)
    if isinstance(checked, RejectedEvent):
        return refuse(checked.reason, raw, source_id, field=checked.field, message_id=checked.messageId)
    assert isinstance(event, dict)  # validate_event refused anything else
    if "receivedAt" in event and event.get("messageId"):
        normalized = event  # written by the collector (or a connector that normalised it)
    else:
        normalized = normalize_event(
            event, checked, datetime.fromtimestamp(record.arrival, UTC),
            # Deterministic, so a redelivered record gets the same id and dedupes.
            message_id_factory=lambda: f"kinesis-{record.shard_id}-{record.sequence_number}",
        )
    return AcceptedEvent(record, source_id, normalized, raw, _short_text(envelope.get("redrive_of"), 256))


class StreamConsumer:
    """Processes one batch of records; see the module docstring for the steps."""

    def __init__(self, history: History, archive: Archive, stages: Sequence[EventStage],
                 quarantine: Quarantine, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._history = history
        self._archive = archive
        self._stages = list(stages)
        self._quarantine = quarantine
        self._now = now

    def process(self, records: list[InboundRecord]) -> BatchOutcome:
        outcome = BatchOutcome()
        if not records:
            return outcome
        decoded = [decode(r) for r in records]
        events = [d for d in decoded if isinstance(d, AcceptedEvent)]
        refused = [d for d in decoded if isinstance(d, QuarantinedRecord)]
        self._file_quarantine(refused, records, outcome)
        self._store_events(events, records, outcome)
        return outcome

    def _batch_key(self, prefix: str, records: list[InboundRecord]) -> str:
        return archive_key(prefix, self._now(), records[0].shard_id,
                           records[0].sequence_number, records[-1].sequence_number)

    def _file_quarantine(self, refused: list[QuarantinedRecord], records: list[InboundRecord],
                         outcome: BatchOutcome) -> None:
        if not refused:
            return
        key = self._batch_key("quarantine", records)
        entries = [q.entry() for q in refused]
        try:
            self._archive.write(key, entries)
            self._quarantine.store(entries, key)
        except Exception as exc:  # retried by Lambda; nothing is lost
            logger.exception("quarantine write failed", extra={"records": len(refused)})
            for q in refused:
                outcome.failed[q.record.owner] = f"quarantine write failed: {type(exc).__name__}"
            return
        outcome.quarantined += len(refused)

    def _store_events(self, events: list[AcceptedEvent], records: list[InboundRecord],
                      outcome: BatchOutcome) -> None:
        if not events:
            return
        # The first copy of an event in the batch is the one processed.
        first: dict[tuple[str, str], AcceptedEvent] = {}
        for accepted in events:
            if accepted.dedupe_key in first:
                outcome.duplicates += 1
            else:
                first[accepted.dedupe_key] = accepted
        try:
            claim = self._history.claim([a.entry() for a in first.values()])
        except Exception as exc:
            logger.exception("history write failed", extra={"events": len(first)})
            for accepted in first.values():
                outcome.failed[accepted.record.owner] = f"history write failed: {type(exc).__name__}"
            return
        outcome.duplicates += len(claim.duplicates)
        fresh = [first[k] for k in first if k in claim.claimed]
        if not fresh:
            return
        staged: list[tuple[str, dict[str, Any], StreamPosition | None]] = [
            (a.source_id, a.event, a.record.position) for a in fresh]
        # The archive keeps the event as stored and as the client sent it.
        lines = [{"source_id": a.source_id, "event": a.event, "raw": a.raw} for a in fresh]
        try:
            self._archive.write(self._batch_key("events", records), lines)
            for stage in self._stages:
                stage.store(staged)
        except Exception as exc:
            logger.exception("event stages failed", extra={"events": len(fresh)})
            for accepted in fresh:
                outcome.failed[accepted.record.owner] = f"stage failed: {type(exc).__name__}"
            self._release(fresh)
            return
        outcome.stored += len(fresh)

    def _release(self, claimed: list[AcceptedEvent]) -> None:
        try:
            self._history.release([a.entry() for a in claimed])
        except Exception:  # the records are retried, which takes their own events again
            logger.exception("releasing history failed", extra={"events": len(claimed)})
