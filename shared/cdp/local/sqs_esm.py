"""An SQS event source mapping, emulated: poll a queue, batch, invoke, delete what succeeded.

The local stack cannot ask Lambda to poll moto's SQS, so this class does what the Lambda
service does for an SQS mapping (the destination queues of activation, FIFO and standard),
following ``SqsEventSourceSpec``:

* ``ReceiveMessage`` (up to 10 a call, ``AttributeNames=All``, ``MessageAttributeNames=All``,
  no long polling: the local moto server runs one request at a time, so a waiting receive
  would stall every other AWS call of the stack) with the queue's own visibility timeout;
  up to ``batch_size`` messages, or what arrived within ``max_batching_window_s`` from the
  first one, and never more than Lambda's 6 MB, make one batch. A FIFO queue takes at most
  10 and no batching window (Lambda refuses both for FIFO; so does ``SqsEventSourceSpec``);
* the function is invoked synchronously with the event ``sqs_event`` builds, at most
  ``max_concurrency`` batches at a time (Lambda's ``ScalingConfig.MaximumConcurrency``);
* success deletes the batch's messages; with ``report_batch_item_failures`` the messages
  listed in ``batchItemFailures`` stay. An invocation error (or, with the partial response
  on, a malformed response: not an object, ``batchItemFailures`` not a list, an entry
  without an ``itemIdentifier`` of the batch) deletes nothing. What stays comes back when
  its visibility timeout ends: the queue's, or what the handler set with
  ``ChangeMessageVisibility``;
* ``maxReceiveCount`` in the queue's ``RedrivePolicy`` is SQS's business: moto moves such a
  message to the dead-letter queue when a receive finds it over the count (as SQS does);
  the mapping never sees it again.

FIFO order. moto keeps a message group locked while one of its messages is in flight, but
when a group's messages come back together (a retried message and the later ones the
handler held behind it) moto 5.2 can deliver a later one first: it unlocks the group
message by message while it scans the queue. So the mapping keeps its own order: per group,
the messages it has received and not yet deleted, in the order it first saw them. A
received message whose earlier, undeleted group mates are not in the same batch is made
visible again at once (``ChangeMessageVisibility`` 0) instead of delivered, and the next
receive returns the group in order. A mate that never comes back was deleted by someone
else (or moved to the dead-letter queue); after ``_MAX_HOLDS`` such holds it is forgotten.

``wait_idle`` means "nothing deliverable now and nothing in flight": no batch gathered or
being invoked, and a receive that started after the call (and after the last batch ended)
found nothing. Messages waiting out a visibility timeout (a failed batch, a retry delay the
handler set) or held behind their group's failed message are not deliverable now, so they
do not keep the mapping busy; ``wait_drained`` waits for them too: it is true when the
queue holds no message at all (visible, in flight or delayed).

Not emulated: Lambda's backing off (fewer concurrent batches) after function errors and
throttles, filter criteria, provisioned pollers. moto's side: its ``SequenceNumber`` is 20
random digits (not increasing) and is missing when a FIFO message has no explicit
deduplication id; visibility timeouts are whole seconds; a message held back for its group
order counts one more receive (``ApproximateReceiveCount``, and towards ``maxReceiveCount``).
As in AWS, the mapping deletes every message not reported as failed: keeping a FIFO group in
order after a failure is the handler's job (report the failed message and the group's later
ones, as ``cdp.activation.runner`` does).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdp.local.functions import MAX_PAYLOAD_BYTES, Invocation, LocalFunction
from cdp.local.lambda_events import REGION

__all__ = [
    "SqsEventSourceMapping",
    "SqsEventSourceSpec",
    "SqsMappingStats",
    "SqsReceivedMessage",
    "failed_messages",
    "lambda_message_attribute",
    "messages_to_keep",
    "sqs_event",
]

log = logging.getLogger(__name__)

# Lambda's limits for an SQS mapping.
FIFO_MAX_BATCH_SIZE = 10
STANDARD_MAX_BATCH_SIZE = 10_000
MAX_BATCHING_WINDOW_S = 300
MIN_MAX_CONCURRENCY, MAX_MAX_CONCURRENCY = 2, 1000
# ReceiveMessage, DeleteMessageBatch and ChangeMessageVisibilityBatch take 10 at a time.
_SQS_BATCH = 10
# Room for the event's envelope inside Lambda's 6 MB request limit.
_EVENT_OVERHEAD_BYTES = 64
# How often a message is held back for an earlier group mate that does not come back
# before the mate is taken as deleted outside the mapping.
_MAX_HOLDS = 3

# The system attributes Lambda passes on, in the order of AWS's sample events.
_SYSTEM_ATTRIBUTES = (
    "ApproximateReceiveCount", "SentTimestamp", "SequenceNumber", "MessageGroupId", "SenderId",
    "MessageDeduplicationId", "ApproximateFirstReceiveTimestamp", "AWSTraceHeader", "DeadLetterQueueSourceArn",
)


@dataclass(frozen=True)
class SqsEventSourceSpec:
    """Settings of an SQS -> Lambda mapping; the defaults are Lambda's (concurrency: its minimum).

    The visibility timeout is the queue's, as in AWS.
    """

    batch_size: int = 10
    max_batching_window_s: float = 0
    report_batch_item_failures: bool = False
    # ScalingConfig.MaximumConcurrency: batches invoked at the same time (2..1000)
    max_concurrency: int = 2

    def check(self, fifo: bool) -> None:
        """``ValueError`` for settings Lambda's CreateEventSourceMapping refuses."""
        limit = FIFO_MAX_BATCH_SIZE if fifo else STANDARD_MAX_BATCH_SIZE
        if not 1 <= self.batch_size <= limit:
            raise ValueError(f"batch_size must be 1..{limit} for a {'FIFO' if fifo else 'standard'} queue")
        if not 0 <= self.max_batching_window_s <= MAX_BATCHING_WINDOW_S:
            raise ValueError(f"max_batching_window_s must be 0..{MAX_BATCHING_WINDOW_S}")
        if fifo and self.max_batching_window_s:
            raise ValueError("a FIFO queue's mapping has no batching window")
        if self.batch_size > _SQS_BATCH and self.max_batching_window_s < 1:
            raise ValueError("a batch_size over 10 needs a max_batching_window_s of at least 1 second")
        if not MIN_MAX_CONCURRENCY <= self.max_concurrency <= MAX_MAX_CONCURRENCY:
            raise ValueError(f"max_concurrency must be {MIN_MAX_CONCURRENCY}..{MAX_MAX_CONCURRENCY}")


@dataclass
class SqsMappingStats:
    invocations: int = 0
    records: int = 0  # records in the events sent to the function
    records_deleted: int = 0
    batch_failures: int = 0  # invocations whose batch failed as a whole (error or malformed response)
    item_failures: int = 0  # records reported in batchItemFailures of otherwise good responses
    records_held: int = 0  # received out of group order and made visible again at once


# --- messages and the event -------------------------------------------------------------


def _base64(value: bytes | bytearray | str) -> str:
    if isinstance(value, str):
        return value  # already base64 (a JSON client)
    return base64.b64encode(bytes(value)).decode("ascii")


@dataclass(frozen=True)
class SqsReceivedMessage:
    """One message as ``ReceiveMessage`` returned it (boto3's shape, binary values as bytes)."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: Mapping[str, str]
    message_attributes: Mapping[str, Mapping[str, Any]]
    md5_of_body: str
    md5_of_message_attributes: str | None = None

    @classmethod
    def from_receive(cls, message: Mapping[str, Any]) -> SqsReceivedMessage:
        body = str(message.get("Body", ""))
        return cls(
            message_id=str(message["MessageId"]),
            receipt_handle=str(message["ReceiptHandle"]),
            body=body,
            attributes={str(k): str(v) for k, v in (message.get("Attributes") or {}).items()},
            message_attributes=dict(message.get("MessageAttributes") or {}),
            md5_of_body=str(message.get("MD5OfBody")
                            or hashlib.md5(body.encode("utf-8"), usedforsecurity=False).hexdigest()),
            md5_of_message_attributes=message.get("MD5OfMessageAttributes"),
        )

    @property
    def group_id(self) -> str | None:
        return self.attributes.get("MessageGroupId")

    def approximate_event_bytes(self) -> int:
        """Bytes this message adds to a Lambda event (body, attributes, the JSON around them)."""
        attributes = sum(len(name) + len(str(value.get("StringValue", ""))) + 4 * len(value.get("BinaryValue", b""))
                         // 3 + 96 for name, value in self.message_attributes.items())
        return len(self.body.encode("utf-8")) + len(self.receipt_handle) + attributes + 640


def lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """A message attribute as Lambda's event carries it: lower camel case, binary in base64."""
    shaped: dict[str, Any] = {}
    if value.get("StringValue") is not None:
        shaped["stringValue"] = value["StringValue"]
    if value.get("BinaryValue") is not None:
        shaped["binaryValue"] = _base64(value["BinaryValue"])
    shaped["stringListValues"] = list(value.get("StringListValues") or [])
    shaped["binaryListValues"] = [_base64(item) for item in value.get("BinaryListValues") or []]
    shaped["dataType"] = value["DataType"]
    return shaped


def sqs_event(messages: Sequence[SqsReceivedMessage], *, queue_arn: str, region: str = REGION) -> dict[str, Any]:
    """The event an SQS event source mapping sends to its function.

    ``md5OfMessageAttributes`` is there only when the message has attributes (AWS's
    sample events, which have none, do not carry it).
    """
    records = []
    for message in messages:
        record: dict[str, Any] = {
            "messageId": message.message_id,
            "receiptHandle": message.receipt_handle,
            "body": message.body,
            "attributes": {name: message.attributes[name] for name in _SYSTEM_ATTRIBUTES
                           if name in message.attributes},
            "messageAttributes": {name: lambda_message_attribute(value)
                                  for name, value in message.message_attributes.items()},
            "md5OfBody": message.md5_of_body,
        }
        if message.message_attributes and message.md5_of_message_attributes:
            record["md5OfMessageAttributes"] = message.md5_of_message_attributes
        record.update({"eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": region})
        records.append(record)
    return {"Records": records}


def failed_messages(message_ids: Sequence[str], invocation: Invocation,
                   report_batch_item_failures: bool) -> tuple[set[str], bool]:
    """The batch's messages that must stay on the queue after ``invocation``, and whether the
    batch failed as a whole (then all of them stay).

    Lambda's rules for a partial batch response: an error, or a response that is not an
    object, a ``batchItemFailures`` that is not a list, an entry whose ``itemIdentifier``
    is missing, empty, null or not a message of the batch, fails the whole batch; a null,
    missing or empty ``batchItemFailures`` is a complete success.
    """
    everything = set(message_ids)
    if invocation.failed:
        return everything, True
    if not report_batch_item_failures:
        return set(), False
    result = invocation.result
    if result is None:
        return set(), False
    if not isinstance(result, dict):
        return everything, True
    failures = result.get("batchItemFailures")
    if failures is None:
        return set(), False
    if not isinstance(failures, list):
        return everything, True
    keep: set[str] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in everything:
            return everything, True
        keep.add(identifier)
    return keep, False


def messages_to_keep(message_ids: Sequence[str], invocation: Invocation,
                     report_batch_item_failures: bool) -> set[str]:
    """The ids of ``failed_messages``: what stays on the queue."""
    return failed_messages(message_ids, invocation, report_batch_item_failures)[0]


# --- the mapping ----------------------------------------------------------------------


class SqsEventSourceMapping:
    """Polls one queue and delivers batches to ``function`` like Lambda does (see the module doc)."""

    def __init__(
        self,
        *,
        sqs: Any,
        queue_url: str,
        function: LocalFunction,
        spec: SqsEventSourceSpec | None = None,
        poll_interval_s: float = 0.1,
        region: str = REGION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec or SqsEventSourceSpec()
        self.fifo = queue_url.endswith(".fifo")
        self.spec.check(self.fifo)
        self._sqs = sqs
        self._queue_url = queue_url
        self._function = function
        self._poll_interval = poll_interval_s
        self._region = region
        self._clock = clock
        self._queue_arn: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._slots = threading.BoundedSemaphore(self.spec.max_concurrency)
        self._cond = threading.Condition()
        self._stats = SqsMappingStats()
        # Guarded by _cond:
        self._busy = 0  # batches being gathered or invoked
        self._in_flight: set[str] = set()  # message ids of those batches
        self._last_empty_poll: float | None = None  # start of the last receive that found nothing
        self._last_batch_end = float("-inf")
        # FIFO order: per group, message id -> the order this mapping first saw it
        self._undeleted: dict[str, dict[str, int]] = {}
        self._seen = 0
        self._holds: dict[str, int] = {}

    @property
    def stats(self) -> SqsMappingStats:
        """Invocations, records delivered and deleted, failures (a copy)."""
        with self._cond:
            return SqsMappingStats(**vars(self._stats))

    @property
    def queue_arn(self) -> str:
        if self._queue_arn is None:
            attributes = self._sqs.get_queue_attributes(QueueUrl=self._queue_url,
                                                        AttributeNames=["QueueArn"])["Attributes"]
            self._queue_arn = str(attributes["QueueArn"])
        return self._queue_arn

    def event(self, messages: Sequence[SqsReceivedMessage]) -> dict[str, Any]:
        """The event Lambda sends for ``messages``."""
        return sqs_event(messages, queue_arn=self.queue_arn, region=self._region)

    # --- one batch (synchronous) ---------------------------------------------------------

    def deliver(self, messages: Sequence[SqsReceivedMessage]) -> set[str]:
        """Invoke the function with one batch and delete what succeeded; returns the ids left on the queue."""
        invocation = self._function.invoke(self.event(messages))
        ids = [message.message_id for message in messages]
        keep, whole = failed_messages(ids, invocation, self.spec.report_batch_item_failures)
        if invocation.failed:
            log.warning("%s: batch of %d failed (%s); its messages return after their visibility timeout",
                        self._function.name, len(ids), invocation.error_type)
        deleted = self._delete([message for message in messages if message.message_id not in keep])
        with self._cond:
            self._stats.invocations += 1
            self._stats.records += len(ids)
            self._stats.records_deleted += len(deleted)
            if whole:
                self._stats.batch_failures += 1
            else:
                self._stats.item_failures += len(keep)
            self._forget(deleted)
        return keep

    def _delete(self, messages: Sequence[SqsReceivedMessage]) -> list[str]:
        deleted: list[str] = []
        for start in range(0, len(messages), _SQS_BATCH):
            chunk = messages[start:start + _SQS_BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)]
            try:
                response = self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                # Not deleted: the messages come back after their visibility timeout (at least once).
                log.warning("DeleteMessageBatch on %s failed: %s", self._queue_url, exc)
                continue
            for entry in response.get("Failed", []):
                log.warning("could not delete %s: %s", chunk[int(entry["Id"])].message_id, entry.get("Message"))
            deleted.extend(chunk[int(entry["Id"])].message_id for entry in response.get("Successful", []))
        return deleted

    def _forget(self, message_ids: Iterable[str]) -> None:
        """Deleted messages leave the FIFO order bookkeeping (call with ``_cond`` held)."""
        gone = set(message_ids)
        for group in list(self._undeleted):
            known = self._undeleted[group]
            for message_id in gone.intersection(known):
                del known[message_id]
            if not known:
                del self._undeleted[group]
        for message_id in gone:
            self._holds.pop(message_id, None)

    # --- polling (threads) ---------------------------------------------------------------

    def start(self) -> None:
        """Start polling: one receiving thread, up to ``max_concurrency`` invocations at a time."""
        self._stop.clear()
        _ = self.queue_arn
        self._spawn("sqs-esm-poll", self._poll)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling; batches being invoked finish first, gathered ones go back to the queue."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = [thread for thread in self._threads if thread.is_alive()]

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            with self._cond:
                self._busy += 1
            try:
                batch = self._gather()
            except Exception:
                log.exception("polling %s failed", self._queue_url)
                batch = []
                self._stop.wait(1.0)
            if batch and self._stop.is_set():
                self._release(batch)
                batch = []
            if not batch:
                self._end_batch([])
                if not self._stop.is_set():
                    self._stop.wait(self._poll_interval)
                continue
            self._spawn("sqs-esm-invoke", self._run_batch, batch)

    def _run_batch(self, batch: list[SqsReceivedMessage]) -> None:
        try:
            self.deliver(batch)
        except Exception:
            # Lambda's poller does not die with a batch; neither does this one. Nothing was
            # deleted, so the messages come back after their visibility timeout.
            log.exception("delivering a batch of %s failed", self._queue_url)
        finally:
            self._end_batch(batch)

    def _end_batch(self, batch: Sequence[SqsReceivedMessage]) -> None:
        with self._cond:
            self._in_flight.difference_update(message.message_id for message in batch)
            self._busy -= 1
            if batch:
                self._last_batch_end = time.monotonic()
            self._cond.notify_all()
        self._slots.release()

    def _gather(self) -> list[SqsReceivedMessage]:
        """Receive one batch: up to batch_size, within the window, under 6 MB (may be empty)."""
        batch: list[SqsReceivedMessage] = []
        size = _EVENT_OVERHEAD_BYTES
        window = float(self.spec.max_batching_window_s)
        window_started: float | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            received = self._receive(min(_SQS_BATCH, self.spec.batch_size - len(batch)))
            if received is None:  # the call failed: try again after a pause
                self._stop.wait(1.0)
                return batch
            admitted = self._admit(received, batch)
            full = False
            for index, message in enumerate(admitted):
                if batch and size + message.approximate_event_bytes() > MAX_PAYLOAD_BYTES:
                    self._release(admitted[index:])
                    full = True
                    break
                size += message.approximate_event_bytes()
                batch.append(message)
            if not batch:
                if not received:
                    with self._cond:
                        self._last_empty_poll = started
                return batch
            if window_started is None:
                window_started = self._clock()
            remaining = window - (self._clock() - window_started)
            if full or len(batch) >= self.spec.batch_size or remaining <= 0:
                return batch
            if not received:
                self._stop.wait(min(self._poll_interval, remaining))
        return batch

    def _receive(self, count: int) -> list[SqsReceivedMessage] | None:
        try:
            response = self._sqs.receive_message(
                QueueUrl=self._queue_url, MaxNumberOfMessages=count, AttributeNames=["All"],
                MessageAttributeNames=["All"], WaitTimeSeconds=0)
        except (ClientError, BotoCoreError) as exc:
            if not self._stop.is_set():
                log.warning("ReceiveMessage on %s failed: %s", self._queue_url, exc)
            return None
        return [SqsReceivedMessage.from_receive(message) for message in response.get("Messages", [])]

    def _admit(self, received: Sequence[SqsReceivedMessage],
               batch: Sequence[SqsReceivedMessage]) -> list[SqsReceivedMessage]:
        """The received messages that may join ``batch``; the others are made visible again.

        Standard queue: all. FIFO: a message whose group has an earlier undeleted message
        that is not in this batch (in another batch in flight, or not returned by this
        receive) is held back, with every later message of its group.
        """
        admitted: list[SqsReceivedMessage] = []
        held: list[SqsReceivedMessage] = []
        with self._cond:
            if self.fifo:
                taken = {message.message_id for message in batch}
                held_groups: set[str] = set()
                for message in received:
                    group = message.group_id or ""
                    known = self._undeleted.setdefault(group, {})
                    if message.message_id not in known:
                        self._seen += 1
                        known[message.message_id] = self._seen
                    if group in held_groups:
                        held.append(message)
                        continue
                    order = known[message.message_id]
                    missing = [mate for mate, seen in known.items() if seen < order and mate not in taken]
                    in_other_batch = any(mate in self._in_flight for mate in missing)
                    if missing and (in_other_batch or self._holds.get(message.message_id, 0) < _MAX_HOLDS):
                        if not in_other_batch:
                            self._holds[message.message_id] = self._holds.get(message.message_id, 0) + 1
                        held_groups.add(group)
                        held.append(message)
                        continue
                    if missing:
                        log.warning("%s: %d earlier message(s) of group %s never came back; taken as deleted",
                                    self._queue_url, len(missing), group)
                        self._forget(missing)
                    self._holds.pop(message.message_id, None)
                    taken.add(message.message_id)
                    admitted.append(message)
            else:
                admitted = list(received)
            self._in_flight.update(message.message_id for message in admitted)
            self._stats.records_held += len(held)
        if held:
            self._release(held, in_flight=False)
        return admitted

    def _release(self, messages: Sequence[SqsReceivedMessage], in_flight: bool = True) -> None:
        """Make received messages visible again now (not delivered: no receive is lost but the count)."""
        if in_flight:
            with self._cond:
                self._in_flight.difference_update(message.message_id for message in messages)
        for start in range(0, len(messages), _SQS_BATCH):
            chunk = messages[start:start + _SQS_BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                       for i, m in enumerate(chunk)]
            try:
                self._sqs.change_message_visibility_batch(QueueUrl=self._queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not make %d message(s) of %s visible again: %s", len(chunk),
                            self._queue_url, exc)

    # --- waiting ---------------------------------------------------------------------------

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is deliverable now and nothing is in flight (see the module doc).

        True once no batch is gathered or invoked and a receive that started after this
        call, and after the last batch ended, found nothing; False on timeout. Messages
        visible before the call have then been delivered (or are waiting out a visibility
        timeout, or held behind their group).
        """
        since = time.monotonic()
        deadline = since + timeout
        with self._cond:
            while True:
                last = self._last_empty_poll
                if self._busy == 0 and last is not None and last >= since and last >= self._last_batch_end:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(0.05, remaining))

    def queue_depth(self) -> int:
        """Messages on the queue: visible, in flight (not visible) and delayed."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self._queue_url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in (
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"))

    def wait_drained(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty (ApproximateNumberOfMessages, ...NotVisible and ...Delayed
        all 0) and no batch is in flight; False on timeout. Retries waiting out a visibility
        timeout are waited for, so ``timeout`` must cover them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                busy = self._busy
            if busy == 0 and self.queue_depth() == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.1, remaining))
