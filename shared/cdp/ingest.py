"""Collection: turn one HTTP request of the Segment tracking API into stream records.

Pure functions with explicit inputs; the collector handler supplies the request
bytes and headers, a write-key lookup, a stream writer and the clock. The record
format written to Kinesis is documented in docs/record-format.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from cdp.segment import CALL_MODELS, CommonFields, RejectedEvent
from cdp.sources import Source

MAX_REQUEST_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 2500
# Not Segment limits but ours, so pathological payloads cannot cost unbounded CPU
# or reach DynamoDB's item limits downstream. Documented in docs/limits.md.
MAX_NESTING_DEPTH = 20
MAX_KEYS_PER_EVENT = 1000

RECORD_VERSION = 1
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
ACCEPTED_CONTENT_TYPES = ("application/json", "text/plain")

SHORT_PATHS = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}
BATCH_PATHS = ("batch", "b", "import")


class RequestRejected(Exception):
    """The whole request is refused; ``status`` and ``code`` say how and why."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 rejected: list[RejectedEvent] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.rejected = rejected

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        if self.rejected is not None:
            error["rejected"] = [r.model_dump(exclude_none=True) for r in self.rejected]
        return {"success": False, "error": error}


class StreamThrottled(Exception):
    """The stream refused records for lack of capacity, even after retries."""


class StreamUnavailable(Exception):
    """Records could not be stored for another reason."""


@dataclass(frozen=True)
class StreamRecord:
    partition_key: str
    data: bytes


class EventStreamWriter(Protocol):
    def put_records(self, records: list[StreamRecord]) -> None:
        """Store every record or raise StreamThrottled / StreamUnavailable."""


SourceLookup = Callable[[str], Source | None]


@dataclass
class CollectionResult:
    accepted: int
    rejected: list[RejectedEvent] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"success": True, "accepted": self.accepted}
        if self.rejected:
            out["rejected"] = [r.model_dump(exclude_none=True) for r in self.rejected]
        return out


# --- request decoding --------------------------------------------------------------


def header(headers: dict[str, str], name: str) -> str | None:
    lname = name.lower()
    for key, value in headers.items():
        if key.lower() == lname:
            return value
    return None


def decode_body(body: bytes, headers: dict[str, str]) -> bytes:
    """Undo Content-Encoding (gzip/deflate), refusing anything above the request limit."""
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestRejected(413, "request_too_large",
                              f"request body is {len(body)} bytes; the limit is {MAX_REQUEST_BYTES}")
    encoding = (header(headers, "content-encoding") or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestRejected(415, "unsupported_content_encoding",
                              f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        # Decompress at most one byte past the limit: a small gzip bomb cannot grow.
        data = inflater.decompress(body, MAX_REQUEST_BYTES + 1)
    except zlib.error as exc:
        raise RequestRejected(400, "invalid_body_encoding", f"body is not valid {encoding}: {exc}") from exc
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestRejected(413, "request_too_large",
                              f"decompressed body exceeds the limit of {MAX_REQUEST_BYTES} bytes")
    return data


def check_content_type(headers: dict[str, str]) -> None:
    content_type = header(headers, "content-type")
    if content_type is None:
        return  # Several server SDKs omit it; the body must still be JSON.
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ACCEPTED_CONTENT_TYPES:
        raise RequestRejected(415, "unsupported_content_type",
                              f"Content-Type {media_type!r} is not supported; send application/json "
                              "or text/plain with a JSON body")


def parse_json(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(400, "invalid_encoding",
                              f"body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        parsed = json.loads(text)
    except RecursionError as exc:
        raise RequestRejected(400, "too_deeply_nested",
                              f"JSON nesting exceeds {MAX_NESTING_DEPTH} levels") from exc
    except ValueError as exc:
        raise RequestRejected(400, "invalid_json", f"body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise RequestRejected(400, "invalid_json", "body must be a JSON object")
    return parsed


def write_key_from(headers: dict[str, str], body: dict[str, Any]) -> str | None:
    """Write key from HTTP Basic (username, empty password) or the body's ``writeKey``."""
    auth = header(headers, "authorization")
    if auth and auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        username = decoded.split(":", 1)[0]
        return username or None
    key = body.get("writeKey")
    return key if isinstance(key, str) and key else None


def authenticate(headers: dict[str, str], body: dict[str, Any], lookup: SourceLookup) -> Source:
    write_key = write_key_from(headers, body)
    if write_key is None:
        raise RequestRejected(401, "missing_write_key",
                              "send the write key as the HTTP Basic username or as writeKey in the body")
    source = lookup(write_key)
    if source is None:
        raise RequestRejected(401, "invalid_write_key", "the write key is not known")
    if not source.enabled:
        raise RequestRejected(401, "source_disabled", "the source of this write key is disabled")
    return source


# --- event checks and enrichment -----------------------------------------------


def _shape_problem(value: Any) -> str | None:
    """Depth and key-count limits, checked iteratively (no recursion to blow up)."""
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            return f"nesting exceeds {MAX_NESTING_DEPTH} levels"
        if isinstance(node, dict):
            keys += len(node)
            if keys > MAX_KEYS_PER_EVENT:
                return f"more than {MAX_KEYS_PER_EVENT} keys in one event"
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return None


def _location(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in CALL_MODELS)]
    return ".".join(parts)


def _validation_rejection(index: int, event: dict[str, Any], exc: ValidationError) -> RejectedEvent:
    first = exc.errors(include_url=False)[0]
    loc = _location(first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    reason = f"{loc}: {message}" if loc else message
    return RejectedEvent(index=index, messageId=_message_id_of(event), field=loc or None, reason=reason)


def _message_id_of(event: dict[str, Any]) -> str | None:
    value = event.get("messageId")
    return value if isinstance(value, str) else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _safe_iso(moment: datetime) -> str | None:
    try:
        return _iso(moment)
    except OverflowError:
        return None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def validate_event(event: Any, call_type: str | None, index: int = 0) -> CommonFields | RejectedEvent:
    """Validate one call against the Segment spec and our limits."""
    if not isinstance(event, dict):
        return RejectedEvent(index=index, reason="event must be a JSON object")
    size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_EVENT_BYTES:
        return RejectedEvent(index=index, messageId=_message_id_of(event),
                             reason=f"event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
    problem = _shape_problem(event)
    if problem:
        return RejectedEvent(index=index, messageId=_message_id_of(event), reason=problem)
    declared = event.get("type")
    effective = call_type or declared
    if call_type and declared is not None and declared != call_type:
        return RejectedEvent(index=index, messageId=_message_id_of(event), field="type",
                             reason=f"type {declared!r} does not match the endpoint /v1/{call_type}")
    model = CALL_MODELS.get(effective) if isinstance(effective, str) else None
    if model is None:
        return RejectedEvent(index=index, messageId=_message_id_of(event), field="type",
                             reason=f"unknown type {declared!r}; expected one of {', '.join(CALL_MODELS)}")
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        return _validation_rejection(index, event, exc)


def normalize_event(raw: dict[str, Any], call: CommonFields, received_at: datetime,
                    batch_defaults: dict[str, Any] | None = None,
                    message_id_factory: Callable[[], str] = lambda: str(uuid.uuid4())) -> dict[str, Any]:
    """The stored form of an event: the original fields plus what the server sets.

    Sets ``receivedAt`` (always the server's), a ``messageId`` when absent, ``type``,
    normalised ids, and corrects client clock skew:
    ``timestamp = receivedAt - (sentAt - originalTimestamp)`` (``receivedAt`` when that is
    out of range). The stream consumer normalises only events that lack ``receivedAt``.
    """
    event = dict(raw)
    defaults = batch_defaults or {}
    for key in ("context", "integrations"):
        if key in defaults and isinstance(defaults[key], dict):
            merged = dict(defaults[key])
            merged.update(event.get(key) or {})
            event[key] = merged
    event["type"] = call.type  # type: ignore[attr-defined]
    for id_field in ("userId", "anonymousId", "groupId", "previousId"):
        value = getattr(call, id_field, None)
        if value is not None:
            event[id_field] = value
    event.pop("writeKey", None)
    # receivedAt is always the server's: a client cannot set it.
    received = received_at
    event["receivedAt"] = _iso(received)
    event["messageId"] = call.messageId or message_id_factory()

    sent_at = call.sentAt or defaults.get("sentAt")
    original = call.originalTimestamp or call.timestamp
    timestamp = received
    if original is not None:
        original = _aware(original)
        original_text = _safe_iso(original)
        # A time that cannot be expressed in UTC (year 1 with an offset) stays as sent.
        event["originalTimestamp"] = original_text or raw.get("originalTimestamp") or raw.get("timestamp")
        if original_text and sent_at is not None:
            try:
                corrected = received - (_aware(sent_at) - original)
                timestamp = corrected if _safe_iso(corrected) else received
            except OverflowError:  # absurd client clocks: fall back to the receipt time
                timestamp = received
        elif original_text:
            timestamp = original
    event["timestamp"] = _iso(timestamp)
    if sent_at is not None:
        event["sentAt"] = _safe_iso(_aware(sent_at)) or raw.get("sentAt") or defaults.get("sentAt")
    return event


def partition_key(event: dict[str, Any]) -> str:
    """Kinesis partition key: a hash of the person's id (no PII in the stream's keys).

    userId first, so a known person's events stay on one shard and in order.
    """
    identity = event.get("userId") or event.get("anonymousId") or event.get("messageId") or ""
    return hashlib.sha256(str(identity).encode("utf-8")).hexdigest()[:32]


def accepted_record(source_id: str, event: dict[str, Any], raw: dict[str, Any]) -> StreamRecord:
    envelope = {"v": RECORD_VERSION, "kind": "event", "source_id": source_id, "event": event, "raw": raw}
    return StreamRecord(partition_key(event), json.dumps(envelope, separators=(",", ":")).encode("utf-8"))


def rejected_record(source_id: str, rejection: RejectedEvent, raw: Any,
                    received_at: datetime) -> StreamRecord:
    envelope = {
        "v": RECORD_VERSION,
        "kind": "rejected",
        "source_id": source_id,
        "received_at": _iso(received_at),
        "rejection": rejection.model_dump(exclude_none=True),
        "raw": raw,
    }
    key = hashlib.sha256(f"{source_id}:{rejection.index}:{received_at}".encode()).hexdigest()[:32]
    return StreamRecord(key, json.dumps(envelope, separators=(",", ":")).encode("utf-8"))


# --- the request ----------------------------------------------------------------


def events_of(body: dict[str, Any], call_type: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The calls of a request and the batch-level defaults that apply to them."""
    if call_type is not None:
        return [body], {}
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise RequestRejected(400, "invalid_batch", "batch must be a JSON array of calls", field="batch")
    if len(batch) > MAX_BATCH_EVENTS:
        raise RequestRejected(400, "batch_too_large",
                              f"batch has {len(batch)} events; the limit is {MAX_BATCH_EVENTS}",
                              field="batch")
    if not batch:
        raise RequestRejected(400, "empty_batch", "batch is empty", field="batch")
    defaults: dict[str, Any] = {}
    for key in ("context", "integrations"):
        if body.get(key) is not None:
            if not isinstance(body[key], dict):
                raise RequestRejected(400, "invalid_batch", f"{key} must be a JSON object", field=key)
            defaults[key] = body[key]
    if body.get("sentAt") is not None:
        try:
            defaults["sentAt"] = _DATETIME.validate_python(body["sentAt"])
        except ValidationError as exc:
            raise RequestRejected(400, "invalid_batch", "sentAt is not a valid timestamp",
                                  field="sentAt") from exc
    return batch, defaults


def collect(
    route: str,
    body: bytes,
    headers: dict[str, str],
    lookup: SourceLookup,
    writer: EventStreamWriter,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    source_ip: str | None = None,
) -> CollectionResult:
    """Accept one request of ``/v1/<route>``; raise RequestRejected if nothing is accepted.

    Valid events go on the stream; events refused inside a batch go on the stream as
    ``rejected`` records (the consumer files them in the quarantine). A request whose
    events are all refused is answered 400, with every reason.
    """
    named = SHORT_PATHS.get(route, route)
    call_type: str | None = None if named in BATCH_PATHS else named
    if call_type is not None and call_type not in CALL_MODELS:
        raise RequestRejected(404, "unknown_route", f"/v1/{route} is not a tracking endpoint")
    check_content_type(headers)
    payload = parse_json(decode_body(body, headers))
    source = authenticate(headers, payload, lookup)
    raw_events, defaults = events_of(payload, call_type)
    if call_type is not None:
        payload.pop("writeKey", None)

    received_at = now()
    records: list[StreamRecord] = []
    rejected: list[RejectedEvent] = []
    for index, raw in enumerate(raw_events):
        checked = validate_event(raw, call_type, index)
        if isinstance(checked, RejectedEvent):
            rejected.append(checked)
            records.append(rejected_record(source.source_id, checked, raw, received_at))
            continue
        event = normalize_event(raw, checked, received_at, defaults)
        if source_ip and isinstance(event.get("context"), dict) and "ip" not in event["context"]:
            event["context"] = {**event["context"], "ip": source_ip}
        elif source_ip and "context" not in event:
            event["context"] = {"ip": source_ip}
        records.append(accepted_record(source.source_id, event, raw))
    accepted = len(raw_events) - len(rejected)

    if call_type is not None and rejected:
        # A refused single call is not quarantined: the client is told why, and
        # keeps the event. Size problems are 413, the rest 400.
        reason = rejected[0]
        status = 413 if reason.reason.startswith("event is ") else 400
        raise RequestRejected(status, "event_too_large" if status == 413 else "invalid_event",
                              reason.reason, field=reason.field, rejected=rejected)
    writer.put_records(records)
    if accepted == 0:
        raise RequestRejected(400, "no_valid_events", "every event of the batch was refused",
                              rejected=rejected)
    return CollectionResult(accepted=accepted, rejected=rejected)

