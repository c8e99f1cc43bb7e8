"""A Kinesis event source mapping, emulated: poll shards, batch, invoke, retry, give up.

The local stack cannot ask Lambda to poll moto's Kinesis, so this class does what
the Lambda service does for a mapping, following ``KinesisEventSourceSpec``:

* per shard, read from ``starting_position`` and hand records to
  ``parallelization_factor`` lanes (records of one partition key stay in one lane,
  in order); each lane invokes the function with up to ``batch_size`` records, or
  what arrived within ``max_batching_window_s``, and never more than Lambda's 6 MB;
* a batch whose invocation raises is a complete failure; with
  ``report_batch_item_failures`` the response's ``batchItemFailures`` checkpoint the
  batch before the lowest failed sequence number and the rest is retried (an empty,
  null or unknown ``itemIdentifier`` fails the whole batch);
* with ``bisect_batch_on_error`` a failed batch is split in halves, and a partial
  failure splits it at the failed record; splitting does not use up retries;
* after ``retry_attempts`` retries, or once records are older than
  ``max_record_age_s``, the records are skipped and a description of them (the
  on-failure message, with ``KinesisBatchInfo``) goes to the on-failure destination.

The retry policy itself is ``cdp.local.stream_delivery.BatchDelivery``, shared with the
DynamoDB Streams mapping; this module supplies the Kinesis event and on-failure message.
Everything that talks to the outside is passed in (Kinesis client, function, on-failure
destination, clock, sleep) so the semantics are unit-tested without threads:
``deliver`` runs the whole retry policy for one batch synchronously.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdp.local.event_filtering import FilterCriteria
from cdp.local.functions import Invocation, LocalFunction
from cdp.local.lambda_events import (
    REGION,
    FailureCondition,
    KinesisRecord,
    execution_role_arn,
    kinesis_event,
    kinesis_on_failure_message,
)
from cdp.local.stream_delivery import BatchDelivery, MappingStats, OnFailure, RetryPolicy, batch_byte_limited
from cdp.resources import KinesisEventSourceSpec

# MappingStats, OnFailure and batch_byte_limited are re-exported: callers import them from here.
__all__ = [
    "KinesisEventSourceMapping",
    "MappingStats",
    "OnFailure",
    "SqsDestination",
    "batch_byte_limited",
    "retry_policy",
]

log = logging.getLogger(__name__)


class SqsDestination:
    """An on-failure destination that sends each message to an SQS queue."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url

    def __call__(self, message: dict[str, Any]) -> None:
        self._sqs.send_message(QueueUrl=self._queue_url, MessageBody=json.dumps(message))


@dataclass
class _Lane:
    """One of a shard's concurrent batch slots (``parallelization_factor``)."""

    records: deque[KinesisRecord] = field(default_factory=deque)
    window_started: float | None = None
    in_flight: bool = False


class _Shard:
    def __init__(self, shard_id: str, lanes: int) -> None:
        self.shard_id = shard_id
        self.lanes = [_Lane() for _ in range(lanes)]
        self.cond = threading.Condition()
        self.reader_done = False
        # monotonic time at which the last GetRecords that found nothing new started
        self.empty_poll_started: float | None = None

    def buffered(self) -> int:
        return sum(len(lane.records) for lane in self.lanes)

    def busy(self) -> bool:
        return any(lane.records or lane.in_flight for lane in self.lanes)


def retry_policy(spec: KinesisEventSourceSpec) -> RetryPolicy:
    """The settings of ``spec`` that decide what happens to a failed batch."""
    return RetryPolicy(bisect_batch_on_error=spec.bisect_batch_on_error, retry_attempts=spec.retry_attempts,
                       max_record_age_s=spec.max_record_age_s,
                       report_batch_item_failures=spec.report_batch_item_failures)


class KinesisEventSourceMapping:
    """Polls every shard of a stream and delivers batches to ``function`` like Lambda does."""

    def __init__(
        self,
        *,
        kinesis: Any,
        stream_name: str,
        function: LocalFunction,
        spec: KinesisEventSourceSpec,
        on_failure: OnFailure | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] | None = None,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        poll_interval_s: float = 0.2,
        region: str = REGION,
        filter_patterns: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        # The mapping's FilterCriteria: a record whose data (JSON-decoded) or metadata
        # matches none is dropped without an invocation, as Lambda does.
        self.filters = FilterCriteria.from_patterns(tuple(filter_patterns)) if filter_patterns else None
        self.records_filtered_out = 0
        self._kinesis = kinesis
        self._stream = stream_name
        self._function = function
        self._clock = clock
        self._stop = threading.Event()
        self._poll_interval = poll_interval_s
        self._region = region
        self._invoke_identity = execution_role_arn(function.name)
        self._stream_arn: str | None = None
        self._shards: dict[str, _Shard] = {}
        self._threads: list[threading.Thread] = []
        self._delivery: BatchDelivery[KinesisRecord] = BatchDelivery(
            function=function, policy=retry_policy(spec), build_event=self.event,
            on_failure_message=self._on_failure_message, on_failure=on_failure, clock=clock,
            sleep=sleep or self._stop.wait, stopped=self._stop.is_set,
            retry_backoff_s=retry_backoff_s, max_backoff_s=max_backoff_s)

    @property
    def stats(self) -> MappingStats:
        """Invocations and records delivered, discarded and described to the on-failure destination."""
        return self._delivery.stats

    @property
    def _backoff(self) -> float:
        # The first retry's wait; tests set it after construction to age records out between retries.
        return self._delivery.retry_backoff_s

    @_backoff.setter
    def _backoff(self, seconds: float) -> None:
        self._delivery.retry_backoff_s = seconds

    # --- events and the retry policy (synchronous) ----------------------------------

    @property
    def stream_arn(self) -> str:
        if self._stream_arn is None:
            summary = self._kinesis.describe_stream_summary(StreamName=self._stream)
            self._stream_arn = str(summary["StreamDescriptionSummary"]["StreamARN"])
        return self._stream_arn

    def event(self, records: Sequence[KinesisRecord]) -> dict[str, Any]:
        """The event Lambda sends for ``records``."""
        return kinesis_event(records, stream_arn=self.stream_arn, invoke_identity_arn=self._invoke_identity,
                             region=self._region)

    def deliver(self, records: Sequence[KinesisRecord]) -> None:
        """Deliver one batch until every record succeeded or was discarded."""
        self._delivery.deliver(records)

    def failure_index(self, records: Sequence[KinesisRecord], invocation: Invocation) -> int | None:
        """Index of the first record to retry; ``None`` when the batch succeeded."""
        return self._delivery.failure_index(records, invocation)

    def _on_failure_message(self, records: Sequence[KinesisRecord], condition: FailureCondition,
                            invokes: int, last: Invocation | None) -> dict[str, Any]:
        return kinesis_on_failure_message(
            records, condition=condition, request_id=last.request_id if last else str(uuid.uuid4()),
            function_arn=self._function.arn, invoke_count=invokes, stream_arn=self.stream_arn,
            timestamp=datetime.fromtimestamp(self._clock(), UTC),
            function_error="Unhandled" if last is not None and last.failed else None)

    # --- polling (threads) -----------------------------------------------------------

    def start(self) -> None:
        """Start one reader per shard and ``parallelization_factor`` invokers per shard."""
        self._stop.clear()
        _ = self.stream_arn
        shard_ids: list[str] = []
        kwargs: dict[str, Any] = {"StreamName": self._stream}
        while True:
            page = self._kinesis.list_shards(**kwargs)
            shard_ids.extend(shard["ShardId"] for shard in page["Shards"])
            if not page.get("NextToken"):
                break
            kwargs = {"NextToken": page["NextToken"]}
        lanes = max(1, min(10, self.spec.parallelization_factor))
        for shard_id in shard_ids:
            shard = _Shard(shard_id, lanes)
            self._shards[shard_id] = shard
            iterator = self._kinesis.get_shard_iterator(
                StreamName=self._stream, ShardId=shard_id,
                ShardIteratorType=self.spec.starting_position)["ShardIterator"]
            self._spawn(f"esm-read-{shard_id}", self._read_shard, shard, iterator)
            for index, lane in enumerate(shard.lanes):
                self._spawn(f"esm-invoke-{shard_id}-{index}", self._run_lane, shard, lane)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling; a batch being delivered finishes its current invocation first."""
        self._stop.set()
        for shard in self._shards.values():
            with shard.cond:
                shard.cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._shards.clear()

    def _lane_of(self, record: KinesisRecord, lanes: int) -> int:
        if lanes == 1:
            return 0
        digest = hashlib.md5(record.partition_key.encode("utf-8"), usedforsecurity=False).digest()
        return int.from_bytes(digest[:4], "big") % lanes

    def _read_shard(self, shard: _Shard, iterator: str | None) -> None:
        read_ahead = 2 * self.spec.batch_size * len(shard.lanes)
        last_sequence: str | None = None
        while not self._stop.is_set() and iterator is not None:
            with shard.cond:
                while shard.buffered() >= read_ahead and not self._stop.is_set():
                    shard.cond.wait(0.5)
            started = time.monotonic()
            try:
                response = self._kinesis.get_records(ShardIterator=iterator, Limit=min(10_000, read_ahead))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ExpiredIteratorException":
                    iterator = self._iterator_after(shard.shard_id, last_sequence)
                    continue
                log.warning("GetRecords on %s failed: %s", shard.shard_id, exc)
                self._stop.wait(1.0)
                continue
            except BotoCoreError as exc:
                if self._stop.is_set():
                    break
                log.warning("GetRecords on %s failed: %s", shard.shard_id, exc)
                self._stop.wait(1.0)
                continue
            iterator = response.get("NextShardIterator")
            records = [
                KinesisRecord(
                    shard_id=shard.shard_id,
                    sequence_number=item["SequenceNumber"],
                    partition_key=item["PartitionKey"],
                    data=bytes(item["Data"]),
                    approximate_arrival=item["ApproximateArrivalTimestamp"].timestamp(),
                )
                for item in response.get("Records", [])
            ]
            caught_up = not records and not response.get("MillisBehindLatest")
            wanted = records if self.filters is None else [r for r in records if self._passes(r)]
            self.records_filtered_out += len(records) - len(wanted)
            with shard.cond:
                for record in wanted:
                    shard.lanes[self._lane_of(record, len(shard.lanes))].records.append(record)
                if records:
                    last_sequence = records[-1].sequence_number
                    shard.empty_poll_started = None
                elif caught_up and not shard.busy():
                    shard.empty_poll_started = started
                shard.cond.notify_all()
            if not records:
                self._stop.wait(self._poll_interval)
        with shard.cond:
            shard.reader_done = True
            shard.cond.notify_all()

    def _passes(self, record: KinesisRecord) -> bool:
        """Lambda's filtering of a Kinesis record: ``data`` is matched as the JSON it holds
        (data that is not JSON matches no ``data`` pattern), beside the record's metadata."""
        assert self.filters is not None
        try:
            data: Any = json.loads(record.data)
        except ValueError:
            data = None
        subject = {"data": data, "partitionKey": record.partition_key, "sequenceNumber": record.sequence_number}
        return self.filters.matches(subject)

    def _iterator_after(self, shard_id: str, sequence: str | None) -> str:
        kwargs: dict[str, Any] = {"StreamName": self._stream, "ShardId": shard_id}
        if sequence is None:
            kwargs["ShardIteratorType"] = self.spec.starting_position
        else:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=sequence)
        return str(self._kinesis.get_shard_iterator(**kwargs)["ShardIterator"])

    def _run_lane(self, shard: _Shard, lane: _Lane) -> None:
        window = max(0.0, float(self.spec.max_batching_window_s))
        while not self._stop.is_set():
            with shard.cond:
                while not self._stop.is_set():
                    if lane.records:
                        if lane.window_started is None:
                            lane.window_started = self._clock()
                        waited = self._clock() - lane.window_started
                        if len(lane.records) >= self.spec.batch_size or waited >= window or shard.reader_done:
                            break
                        shard.cond.wait(min(self._poll_interval, window - waited))
                    else:
                        shard.cond.wait(0.5)
                if self._stop.is_set():
                    return
                count = batch_byte_limited(lane.records, self.spec.batch_size)
                batch = [lane.records.popleft() for _ in range(count)]
                lane.window_started = self._clock() if lane.records else None
                lane.in_flight = True
                shard.cond.notify_all()
            try:
                self.deliver(batch)
            except Exception:
                # Lambda's poller does not die with a batch; neither does this one.
                log.exception("delivering a batch of %s failed", shard.shard_id)
            finally:
                with shard.cond:
                    lane.in_flight = False
                    shard.cond.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every shard has been read to its tip since this call and no batch is in flight.

        Returns False on timeout. Records put before the call are delivered (or
        discarded) when it returns True.
        """
        since = time.monotonic()
        deadline = since + timeout
        while True:
            if all(self._idle_since(shard, since) for shard in list(self._shards.values())):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.05, remaining))

    @staticmethod
    def _idle_since(shard: _Shard, since: float) -> bool:
        with shard.cond:
            if shard.busy():
                return False
            return shard.reader_done or (shard.empty_poll_started is not None
                                         and shard.empty_poll_started >= since)
