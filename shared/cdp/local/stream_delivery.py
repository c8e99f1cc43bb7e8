"""The retry policy of a stream event source mapping (Kinesis or DynamoDB Streams), emulated.

Lambda treats the batches of both stream sources alike: a batch whose invocation
raises is a complete failure; with ``ReportBatchItemFailures`` the response's
``batchItemFailures`` checkpoint the batch before the lowest failed sequence number
and the rest is retried (an empty, null or unknown ``itemIdentifier`` fails the whole
batch); with ``BisectBatchOnFunctionError`` a failed batch is split in halves and a
partial failure splits it at the failed record, without using up retries; after
``MaximumRetryAttempts`` retries, or once records are older than
``MaximumRecordAgeInSeconds``, the records are skipped and described to the
on-failure destination.

``BatchDelivery`` runs that policy synchronously for one batch; what differs per
source (the event, the on-failure message) is passed in; ``kinesis_esm`` and
``dynamodb_esm`` both deliver through it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from cdp.local.functions import MAX_PAYLOAD_BYTES, Invocation, LocalFunction
from cdp.local.lambda_events import FailureCondition

log = logging.getLogger(__name__)

OnFailure = Callable[[dict[str, Any]], None]
# Room for the event's envelope inside Lambda's 6 MB request limit.
EVENT_OVERHEAD_BYTES = 64


class StreamRecord(Protocol):
    """What the retry policy needs to know about a record read from a shard."""

    @property
    def shard_id(self) -> str: ...

    @property
    def sequence_number(self) -> str: ...

    @property
    def approximate_arrival(self) -> float:  # epoch seconds
        ...

    def approximate_event_bytes(self) -> int: ...


R = TypeVar("R", bound=StreamRecord)


@dataclass(frozen=True)
class RetryPolicy:
    """The settings of a mapping that decide what happens to a failed batch."""

    bisect_batch_on_error: bool = False
    retry_attempts: int = -1  # -1: until the records expire
    max_record_age_s: int = -1  # -1: no limit
    report_batch_item_failures: bool = False


@dataclass
class MappingStats:
    invocations: int = 0
    records_delivered: int = 0
    records_discarded: int = 0
    on_failure_messages: int = 0


@dataclass
class Attempt(Generic[R]):
    """A run of records being delivered, with what it has cost so far."""

    records: list[R]
    retries: int = 0
    invokes: int = 0
    last: Invocation | None = None


# (records skipped, why, the attempt's invocation count, its last invocation) -> message
OnFailureMessage = Callable[[Sequence[R], FailureCondition, int, Invocation | None], dict[str, Any]]


def batch_byte_limited(records: Iterable[StreamRecord], batch_size: int) -> int:
    """How many leading records fit in one invocation (count and 6 MB payload limit)."""
    total = EVENT_OVERHEAD_BYTES
    count = 0
    for record in itertools.islice(records, batch_size):
        total += record.approximate_event_bytes()
        if count and total > MAX_PAYLOAD_BYTES:
            break
        count += 1
    return count


class BatchDelivery(Generic[R]):
    """Delivers one batch to ``function`` until every record succeeded or was discarded."""

    def __init__(
        self,
        *,
        function: LocalFunction,
        policy: RetryPolicy,
        build_event: Callable[[Sequence[R]], dict[str, Any]],
        on_failure_message: OnFailureMessage[R],
        on_failure: OnFailure | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Any],
        stopped: Callable[[], bool],
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.policy = policy
        self._function = function
        self._build_event = build_event
        self._message = on_failure_message
        self._on_failure = on_failure
        self._clock = clock
        self._sleep = sleep
        self._stopped = stopped
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self._stats_lock = threading.Lock()
        self.stats = MappingStats()

    def deliver(self, records: Sequence[R]) -> None:
        """Deliver one batch until every record succeeded or was discarded."""
        pending: list[Attempt[R]] = [Attempt(list(records))]
        bisect = self.policy.bisect_batch_on_error
        while pending and not self._stopped():
            attempt = pending.pop()
            self._discard_expired(attempt)
            if not attempt.records:
                continue
            invocation = self._function.invoke(self._build_event(attempt.records))
            attempt.invokes += 1
            attempt.last = invocation
            with self._stats_lock:
                self.stats.invocations += 1
            failed_at = self.failure_index(attempt.records, invocation)
            if failed_at is None:
                self._count_delivered(len(attempt.records))
                continue
            if failed_at > 0:
                # Checkpoint before the lowest failed record; retry from there.
                self._count_delivered(failed_at)
                rest = Attempt(attempt.records[failed_at:], attempt.retries, attempt.invokes, invocation)
                if bisect:
                    pending.append(rest)  # split at the failed record: not a retry
                else:
                    self._retry_or_discard(rest, pending)
                continue
            if bisect and len(attempt.records) > 1:
                middle = len(attempt.records) // 2
                for part in (attempt.records[middle:], attempt.records[:middle]):
                    pending.append(Attempt(part, attempt.retries, attempt.invokes, invocation))
                continue
            self._retry_or_discard(attempt, pending)

    def failure_index(self, records: Sequence[R], invocation: Invocation) -> int | None:
        """Index of the first record to retry; ``None`` when the batch succeeded."""
        if invocation.failed:
            return 0
        if not self.policy.report_batch_item_failures:
            return None
        result = invocation.result
        if not isinstance(result, dict):
            return None
        failures = result.get("batchItemFailures")
        if not failures:
            return None  # null or empty list: complete success
        if not isinstance(failures, list):
            return 0
        positions = {record.sequence_number: index for index, record in enumerate(records)}
        lowest = len(records)
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not isinstance(identifier, str) or identifier not in positions:
                return 0  # empty, null or unknown identifier: the whole batch failed
            lowest = min(lowest, positions[identifier])
        return lowest

    def _retry_or_discard(self, attempt: Attempt[R], pending: list[Attempt[R]]) -> None:
        limit = self.policy.retry_attempts
        if 0 <= limit <= attempt.retries:
            self._discard(attempt.records, "RetryAttemptsExhausted", attempt)
            return
        attempt.retries += 1
        self._sleep(min(self.max_backoff_s, self.retry_backoff_s * 2 ** (attempt.retries - 1)))
        pending.append(attempt)

    def _discard_expired(self, attempt: Attempt[R]) -> None:
        max_age = self.policy.max_record_age_s
        if max_age < 0:
            return
        now = self._clock()
        expired = 0
        for record in attempt.records:
            if now - record.approximate_arrival <= max_age:
                break
            expired += 1
        if expired:
            self._discard(attempt.records[:expired], "RecordAgeExceeded", attempt)
            del attempt.records[:expired]

    def _discard(self, records: list[R], condition: FailureCondition, attempt: Attempt[R]) -> None:
        message = self._message(records, condition, attempt.invokes, attempt.last)
        with self._stats_lock:
            self.stats.records_discarded += len(records)
        log.warning("%s: %d record(s) of %s skipped (%s)", self._function.name, len(records),
                    records[0].shard_id, condition)
        if self._on_failure is None:
            return
        try:
            self._on_failure(message)
        except Exception:
            log.exception("could not send the on-failure message")
            return
        with self._stats_lock:
            self.stats.on_failure_messages += 1

    def _count_delivered(self, count: int) -> None:
        with self._stats_lock:
            self.stats.records_delivered += count
