"""A DynamoDB Streams event source mapping, emulated: poll a table's stream, filter, batch, invoke.

The local stack cannot ask Lambda to poll moto's DynamoDB Streams, so this class does
what the Lambda service does for such a mapping, following ``DynamoDbEventSourceSpec``:

* one poller per shard, reading from ``starting_position``; the stream's shards are
  described again every ``shard_discovery_interval_s`` and new ones (DynamoDB rolls
  shards over about every four hours) get a poller that starts once its parent shard
  has been read to its end, as Lambda keeps the order of one item's changes;
* records that match none of the filter criteria are dropped without an invocation;
* the function gets up to ``batch_size`` records, or what arrived within
  ``max_batching_window_s``, never more than Lambda's 6 MB, as the event Lambda sends
  (``{"Records": [{eventID, eventName, eventVersion: "1.1", eventSource:
  "aws:dynamodb", awsRegion, dynamodb: {...}, eventSourceARN}]}``, binary values in
  base64);
* failures follow ``cdp.local.stream_delivery`` (the same policy as Kinesis): partial
  batch responses, bisect, retries, maximum record age, and an on-failure message
  with ``DDBStreamBatchInfo`` to the on-failure destination.

moto's records are normalised to AWS's shape (see ``lambda_record``), and the MODIFY
records moto writes for writes that changed nothing are dropped (``unchanged_modify``;
DynamoDB writes none; only detectable with NEW_AND_OLD_IMAGES). moto answers
only on the ``streams.dynamodb.<region>`` endpoint, not on the account-based one
recent botocore picks when a stream ARN is given: make the client with
``dynamodb_streams_client``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cdp.local.event_filtering import FilterCriteria
from cdp.local.functions import Invocation, LocalFunction
from cdp.local.kinesis_esm import SqsDestination
from cdp.local.lambda_events import REGION, FailureCondition, stream_on_failure_message
from cdp.local.stream_delivery import BatchDelivery, MappingStats, OnFailure, RetryPolicy, batch_byte_limited

__all__ = [
    "DynamoDbEventSourceMapping",
    "DynamoDbEventSourceSpec",
    "DynamoDbStreamRecord",
    "SqsDestination",
    "dynamodb_on_failure_message",
    "dynamodb_streams_client",
    "lambda_record",
    "latest_stream_arn",
    "unchanged_modify",
]

log = logging.getLogger(__name__)

# The most records one GetRecords call on DynamoDB Streams returns.
_GET_RECORDS_LIMIT = 1000
_ITERATOR_LOST = ("ExpiredIteratorException", "TrimmedDataAccessException")


@dataclass(frozen=True)
class DynamoDbEventSourceSpec:
    """Settings of a DynamoDB Streams -> Lambda mapping; the defaults are Lambda's."""

    batch_size: int = 100
    max_batching_window_s: float = 0
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    bisect_batch_on_error: bool = False
    retry_attempts: int = -1  # -1: until the record leaves the stream (24 h)
    max_record_age_s: int = -1
    report_batch_item_failures: bool = False
    # ``Filters[].Pattern`` of the mapping's FilterCriteria (JSON strings); none: every record
    filter_patterns: tuple[str, ...] = ()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(bisect_batch_on_error=self.bisect_batch_on_error, retry_attempts=self.retry_attempts,
                           max_record_age_s=self.max_record_age_s,
                           report_batch_item_failures=self.report_batch_item_failures)


def dynamodb_streams_client(session: boto3.Session | None = None, **kwargs: Any) -> Any:
    """A DynamoDB Streams client moto answers (classic endpoint, not the account-based one)."""
    config = Config(account_id_endpoint_mode="disabled")
    if "config" in kwargs:
        config = kwargs.pop("config").merge(config)
    return (session or boto3.Session()).client("dynamodbstreams", config=config, **kwargs)


def latest_stream_arn(dynamodb: Any, table_name: str) -> str:
    """The ARN of the table's current stream; ``ValueError`` if its stream is off."""
    arn = dynamodb.describe_table(TableName=table_name)["Table"].get("LatestStreamArn")
    if not arn:
        raise ValueError(f"table {table_name} has no stream")
    return str(arn)


# --- records --------------------------------------------------------------------------


def _json_attribute(value: Any) -> Any:
    """An attribute value as Lambda's JSON carries it: binary (B, BS) base64-encoded."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for kind, inner in value.items():
        if kind == "B":
            out[kind] = base64.b64encode(bytes(inner)).decode("ascii") if isinstance(inner, bytes | bytearray) \
                else inner
        elif kind == "BS":
            out[kind] = [base64.b64encode(bytes(b)).decode("ascii") if isinstance(b, bytes | bytearray) else b
                         for b in inner]
        elif kind == "M":
            out[kind] = {name: _json_attribute(v) for name, v in inner.items()}
        elif kind == "L":
            out[kind] = [_json_attribute(v) for v in inner]
        else:
            out[kind] = inner
    return out


def unchanged_modify(raw: dict[str, Any]) -> bool:
    """A MODIFY whose images are equal: a write that changed nothing.

    DynamoDB writes no stream record for a PutItem or UpdateItem that leaves the item
    as it was; moto does (a MODIFY). Only visible with NEW_AND_OLD_IMAGES.
    """
    stream = raw.get("dynamodb", {})
    return (raw.get("eventName") == "MODIFY" and "NewImage" in stream and "OldImage" in stream
            and stream["NewImage"] == stream["OldImage"])


def _json_item(item: dict[str, Any]) -> dict[str, Any]:
    return {name: _json_attribute(value) for name, value in item.items()}


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def lambda_record(raw: dict[str, Any], *, stream_arn: str, region: str = REGION) -> dict[str, Any]:
    """One GetRecords record (as boto3 returns it) as Lambda puts it in the event.

    boto3 turns ``ApproximateCreationDateTime`` into a datetime and binary values into
    bytes; Lambda's JSON carries epoch seconds and base64. moto says ``eventVersion``
    1.0 and leaves out ``eventSourceARN``; Lambda sends 1.1 and the stream's ARN.
    """
    stream = raw["dynamodb"]
    view = stream.get("StreamViewType")
    body: dict[str, Any] = {"ApproximateCreationDateTime": int(_epoch(stream["ApproximateCreationDateTime"]))}
    body["Keys"] = _json_item(stream.get("Keys", {}))
    # Images the view type leaves out are dropped even if the source included them.
    if "NewImage" in stream and view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
        body["NewImage"] = _json_item(stream["NewImage"])
    if "OldImage" in stream and view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
        body["OldImage"] = _json_item(stream["OldImage"])
    body["SequenceNumber"] = str(stream["SequenceNumber"])
    body["SizeBytes"] = int(stream.get("SizeBytes", 0))
    body["StreamViewType"] = view
    record: dict[str, Any] = {
        "eventID": raw.get("eventID") or uuid.uuid4().hex,
        "eventName": raw["eventName"],
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": raw.get("awsRegion") or region,
        "dynamodb": body,
    }
    if "userIdentity" in raw:  # TTL deletions
        record["userIdentity"] = raw["userIdentity"]
    record["eventSourceARN"] = stream_arn
    return record


@dataclass(frozen=True)
class DynamoDbStreamRecord:
    """One change read from a shard: the record Lambda would deliver, plus its shard."""

    shard_id: str
    sequence_number: str
    approximate_arrival: float  # epoch seconds (ApproximateCreationDateTime)
    record: dict[str, Any] = field(compare=False)

    def approximate_event_bytes(self) -> int:
        return len(json.dumps(self.record)) + 2


def _iso_seconds(epoch: float) -> str:
    # The creation time has whole seconds; the on-failure message prints it so.
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dynamodb_on_failure_message(records: Sequence[DynamoDbStreamRecord], **fields: Any) -> dict[str, Any]:
    """What Lambda sends to a DynamoDB Streams mapping's on-failure destination (arrival
    times to the second)."""
    return stream_on_failure_message(records, batch_info_key="DDBStreamBatchInfo", arrival=_iso_seconds, **fields)


# --- the mapping ------------------------------------------------------------------------


class _Shard:
    def __init__(self, shard_id: str, parent_id: str | None, iterator_type: str) -> None:
        self.shard_id = shard_id
        self.parent_id = parent_id
        self.iterator_type = iterator_type
        self.lock = threading.Lock()
        self.buffered = 0
        self.in_flight = False
        self.done = False  # closed and read to its end (or never to be read)
        # monotonic time at which the last GetRecords that found nothing started
        self.empty_poll_started: float | None = None

    def idle_since(self, since: float) -> bool:
        with self.lock:
            if self.buffered or self.in_flight:
                return False
            return self.done or (self.empty_poll_started is not None and self.empty_poll_started >= since)


class DynamoDbEventSourceMapping:
    """Polls every shard of one table's stream and delivers batches to ``function`` like Lambda."""

    def __init__(
        self,
        *,
        streams: Any,
        stream_arn: str,
        function: LocalFunction,
        spec: DynamoDbEventSourceSpec = DynamoDbEventSourceSpec(),
        on_failure: OnFailure | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] | None = None,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        poll_interval_s: float = 0.25,  # Lambda polls a DynamoDB shard four times a second
        shard_discovery_interval_s: float = 10.0,
        region: str = REGION,
    ) -> None:
        if not 1 <= spec.batch_size <= 10_000:
            raise ValueError("batch_size must be 1-10000")
        self.spec = spec
        self.stream_arn = stream_arn
        self.filters = FilterCriteria.from_patterns(spec.filter_patterns)
        self._streams = streams
        self._function = function
        self._clock = clock
        self._stop = threading.Event()
        self._poll_interval = poll_interval_s
        self._discovery_interval = shard_discovery_interval_s
        self._region = region
        self._shards: dict[str, _Shard] = {}
        self._shards_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._counters_lock = threading.Lock()
        self.unchanged_modifies_dropped = 0
        self._running = False
        self.records_filtered_out = 0
        self._delivery: BatchDelivery[DynamoDbStreamRecord] = BatchDelivery(
            function=function, policy=spec.retry_policy(), build_event=self.event,
            on_failure_message=self._on_failure_message, on_failure=on_failure, clock=clock,
            sleep=sleep or self._stop.wait, stopped=self._stop.is_set,
            retry_backoff_s=retry_backoff_s, max_backoff_s=max_backoff_s)

    @property
    def stats(self) -> MappingStats:
        return self._delivery.stats

    # --- events and the retry policy (synchronous) ----------------------------------

    def event(self, records: Sequence[DynamoDbStreamRecord]) -> dict[str, Any]:
        """The event Lambda sends for ``records``."""
        return {"Records": [record.record for record in records]}

    def to_record(self, shard_id: str, raw: dict[str, Any]) -> DynamoDbStreamRecord:
        """A GetRecords record of ``shard_id`` as this mapping delivers it."""
        record = lambda_record(raw, stream_arn=self.stream_arn, region=self._region)
        return DynamoDbStreamRecord(shard_id=shard_id, sequence_number=record["dynamodb"]["SequenceNumber"],
                                    approximate_arrival=_epoch(raw["dynamodb"]["ApproximateCreationDateTime"]),
                                    record=record)

    def deliver(self, records: Sequence[DynamoDbStreamRecord]) -> None:
        """Deliver one batch until every record succeeded or was discarded."""
        self._delivery.deliver(records)

    def _on_failure_message(self, records: Sequence[DynamoDbStreamRecord], condition: FailureCondition,
                            invokes: int, last: Invocation | None) -> dict[str, Any]:
        return dynamodb_on_failure_message(
            records, condition=condition, request_id=last.request_id if last else str(uuid.uuid4()),
            function_arn=self._function.arn, invoke_count=invokes, stream_arn=self.stream_arn,
            timestamp=datetime.fromtimestamp(self._clock(), UTC),
            function_error="Unhandled" if last is not None and last.failed else None)

    # --- polling (threads) ------------------------------------------------------------

    def start(self) -> None:
        """Describe the stream, start a poller per shard, and keep looking for new shards."""
        self._stop.clear()
        self._running = True
        self._discover(initial=True)
        self._spawn("ddb-esm-discover", self._discover_forever)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling; a batch being delivered finishes its current invocation first."""
        self._stop.set()
        self._running = False
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        with self._shards_lock:
            self._shards.clear()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _describe_shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            description = self._streams.describe_stream(**kwargs)["StreamDescription"]
            shards.extend(description.get("Shards", []))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            kwargs["ExclusiveStartShardId"] = last

    def _discover(self, initial: bool = False) -> None:
        described = self._describe_shards()
        with self._shards_lock:
            for shard in described:
                shard_id = shard["ShardId"]
                if shard_id in self._shards:
                    continue
                closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
                # At start, LATEST reads only the open shards from their tip; a shard born
                # later is read from its beginning, whatever the starting position.
                iterator_type = self.spec.starting_position if initial else "TRIM_HORIZON"
                state = _Shard(shard_id, shard.get("ParentShardId"), iterator_type)
                if initial and closed and iterator_type == "LATEST":
                    state.done = True
                self._shards[shard_id] = state
                if not state.done:
                    self._spawn(f"ddb-esm-{shard_id}", self._poll_shard, state)

    def _discover_forever(self) -> None:
        while not self._stop.wait(self._discovery_interval):
            try:
                self._discover()
            except (ClientError, BotoCoreError) as exc:
                if not self._stop.is_set():
                    log.warning("DescribeStream on %s failed: %s", self.stream_arn, exc)

    def _wait_for_parent(self, shard: _Shard) -> bool:
        """Wait until the parent shard (if this mapping reads it) is read to its end."""
        while not self._stop.is_set():
            with self._shards_lock:
                parent = self._shards.get(shard.parent_id) if shard.parent_id else None
            if parent is None or parent.done:
                return True
            self._stop.wait(self._poll_interval)
        return False

    def _iterator(self, shard: _Shard, after: str | None) -> str | None:
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id}
        if after is None:
            kwargs["ShardIteratorType"] = shard.iterator_type
        else:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after)
        iterator = self._streams.get_shard_iterator(**kwargs).get("ShardIterator")
        return str(iterator) if iterator else None

    def _poll_shard(self, shard: _Shard) -> None:
        try:
            if self._wait_for_parent(shard):
                self._read_and_deliver(shard)
        except Exception:
            # Lambda's poller does not die with a shard; this one logs and ends, visibly.
            log.exception("polling %s failed", shard.shard_id)
        finally:
            with shard.lock:
                shard.done = True

    def _read_and_deliver(self, shard: _Shard) -> None:
        spec = self.spec
        window = max(0.0, float(spec.max_batching_window_s))
        iterator = self._iterator(shard, None)
        last_read: str | None = None  # the last sequence number read, filtered out or not
        buffer: list[DynamoDbStreamRecord] = []
        window_started: float | None = None
        while not self._stop.is_set():
            found_any = False
            if iterator is not None and len(buffer) < spec.batch_size:
                started = time.monotonic()
                try:
                    response = self._streams.get_records(ShardIterator=iterator, Limit=_GET_RECORDS_LIMIT)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") in _ITERATOR_LOST:
                        iterator = self._iterator(shard, last_read)
                        continue
                    log.warning("GetRecords on %s failed: %s", shard.shard_id, exc)
                    self._stop.wait(1.0)
                    continue
                except BotoCoreError as exc:
                    if self._stop.is_set():
                        return
                    log.warning("GetRecords on %s failed: %s", shard.shard_id, exc)
                    self._stop.wait(1.0)
                    continue
                iterator = response.get("NextShardIterator")  # none: the shard is closed and read
                raw_records = response.get("Records", [])
                found_any = bool(raw_records)
                filtered_out = unchanged = 0
                for raw in raw_records:
                    record = self.to_record(shard.shard_id, raw)
                    last_read = record.sequence_number
                    if unchanged_modify(raw):
                        unchanged += 1  # a record AWS would never have written
                    elif self.filters.matches(record.record):
                        buffer.append(record)
                    else:
                        filtered_out += 1
                if filtered_out or unchanged:
                    with self._counters_lock:
                        self.records_filtered_out += filtered_out
                        self.unchanged_modifies_dropped += unchanged
                with shard.lock:
                    shard.buffered = len(buffer)
                    if not found_any and not buffer:
                        shard.empty_poll_started = started
            if buffer:
                if window_started is None:
                    window_started = self._clock()
                waited = self._clock() - window_started
                if len(buffer) >= spec.batch_size or waited >= window or iterator is None:
                    count = batch_byte_limited(buffer, spec.batch_size)
                    batch, buffer = buffer[:count], buffer[count:]
                    window_started = self._clock() if buffer else None
                    with shard.lock:
                        shard.in_flight = True
                        shard.buffered = len(buffer)
                    try:
                        self.deliver(batch)
                    finally:
                        with shard.lock:
                            shard.in_flight = False
                    continue
                if not found_any:
                    self._stop.wait(min(self._poll_interval, window - waited))
                continue
            if iterator is None:
                return  # closed shard, everything delivered
            if not found_any:
                self._stop.wait(self._poll_interval)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every shard has been read to its tip since this call and no batch is in flight.

        The stream is described first, so shards born since the last discovery count too.
        Returns False on timeout. Changes made before the call are delivered (or discarded,
        or filtered out) when it returns True.
        """
        since = time.monotonic()
        deadline = since + timeout
        if self._running:
            self._discover()
        while True:
            with self._shards_lock:
                shards = list(self._shards.values())
            if all(shard.idle_since(since) for shard in shards):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.05, remaining))
