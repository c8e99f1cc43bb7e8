"""A destination Lambda's work on one batch of its FIFO queue (per-message destinations).

``deliver_records`` takes the SQS records Lambda delivers (its event's ``Records``, in
queue order), sends each through the destination and decides, with the delivery policy
(``cdp.activation.delivery``), what becomes of it:

* delivered: nothing to do (Lambda deletes what is not reported as failed);
* to retry: made visible again after the policy's delay (``ChangeMessageVisibility``) and
  reported as a batch item failure; the later records of the same message group (the same
  profile) are reported too, without being sent, and made visible again after the same
  delay, so a profile's messages are delivered in order (an exit never before its enter),
  while other profiles go on. (Left in flight, a held record would come back only after
  the queue's visibility timeout, and SQS FIFO returns none of its group until then: the
  profile would stall for that long, its retried message included.)
* permanent, or retried past the window: sent with its reason to the destination's
  dead-letter queue and removed from the queue (not reported).

The attempt count and the first attempt's time are the SQS record's own
(``ApproximateReceiveCount``, ``ApproximateFirstReceiveTimestamp``): no state is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cdp.activation.delivery import Destination, OutboundMessage, Outcome, RetryPolicy, give_up_reason


class QueueOperations(Protocol):
    """What the runner asks of SQS (``cdp.aws`` adapters; fakes in tests)."""

    def retry_later(self, receipt_handle: str, delay_s: float) -> None: ...

    def dead_letter(self, record: Mapping[str, Any], reason: str) -> None: ...


@dataclass
class BatchResult:
    """The Lambda's partial batch response, and counts for the delivery log."""

    failures: list[str] = field(default_factory=list)  # message ids to report
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    held: int = 0  # later messages of a group whose earlier message is being retried
    last_error: str = ""  # the reason of the last retried or dead-lettered message (no personal data)

    def response(self) -> dict[str, list[dict[str, str]]]:
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in self.failures]}


def _attribute(record: Mapping[str, Any], name: str, default: str = "") -> str:
    return str((record.get("attributes") or {}).get(name, default))


def outbound(record: Mapping[str, Any]) -> OutboundMessage:
    """The message a record carries (its body is the router's JSON); its id for the
    destination (``Idempotency-Key``): a redriven message's original id
    (``idempotency_key`` attribute), else the deduplication id, else the SQS message id."""
    redriven = ((record.get("messageAttributes") or {}).get("idempotency_key") or {}).get("stringValue")
    dedup = redriven or _attribute(record, "MessageDeduplicationId") or str(record["messageId"])
    body = json.loads(record["body"])
    if not isinstance(body, dict):  # JSON, but not a router message: it would fail on every attempt
        raise ValueError("message body is not a JSON object")
    return OutboundMessage(dedup, body)


def deliver_records(records: Sequence[Mapping[str, Any]], destination: Destination, queue: QueueOperations,
                    policy: RetryPolicy, now: datetime | None = None) -> BatchResult:
    """Deliver one batch; see the module docstring."""
    moment = now or datetime.now(UTC)
    result = BatchResult()
    held_groups: dict[str, float] = {}  # group -> the retry delay of the message holding it
    for record in records:
        group = _attribute(record, "MessageGroupId")
        if group and group in held_groups:
            queue.retry_later(record["receiptHandle"], held_groups[group])
            result.failures.append(record["messageId"])
            result.held += 1
            continue
        try:
            message = outbound(record)
        except (ValueError, KeyError) as exc:  # not a router message: it will never deliver
            queue.dead_letter(record, f"unreadable message: {type(exc).__name__}")
            result.dead_lettered += 1
            continue
        try:
            (outcome,) = destination.send([message])
        except Exception as exc:  # the destination's own failure: try again later
            outcome = Outcome("retry", f"destination error: {type(exc).__name__}")
        delay = _settle(record, outcome, queue, policy, moment, result)
        if group and delay is not None:
            held_groups[group] = delay  # retried: the profile's later messages wait behind it
    return result


CurrentMemberships = Callable[[Mapping[str, Iterable[str]]], Mapping[str, Mapping[str, bool]]]


def _version(body: Mapping[str, Any]) -> int:
    """A change's version; 0 when it has none readable (never raising: one odd message must
    not fail its whole batch)."""
    version = body.get("version")
    if isinstance(version, str) and version.isascii() and version.isdigit():
        return int(version)
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def _collapse(messages: Sequence[tuple[Mapping[str, Any], OutboundMessage]]
              ) -> tuple[list[tuple[Mapping[str, Any], OutboundMessage]], list[Mapping[str, Any]]]:
    """At most one audience change per (profile, audience): the newest version (the last
    received on a tie); the others are superseded. Events are all kept."""
    kept: dict[Any, tuple[Mapping[str, Any], OutboundMessage]] = {}
    superseded: list[Mapping[str, Any]] = []
    for n, (record, message) in enumerate(messages):
        body = message.body
        if body.get("kind") != "audience_membership":
            kept[("event", n)] = (record, message)
            continue
        key = (body.get("profile_id"), body.get("audience_id"))
        before = kept.get(key)
        if before is not None and _version(before[1].body) > _version(body):
            superseded.append(record)
            continue
        if before is not None:
            superseded.append(before[0])
        kept[key] = (record, message)
    return list(kept.values()), superseded


def deliver_batch_records(records: Sequence[Mapping[str, Any]], destination: Destination, queue: QueueOperations,
                          policy: RetryPolicy, current: CurrentMemberships, now: datetime | None = None
                          ) -> BatchResult:
    """Deliver one batch of a standard queue to a batch API (Meta, Google, HubSpot, S3).

    A standard queue may deliver a profile's changes out of order and in different
    batches, so what is sent is each (profile, audience)'s *current* membership, read
    (consistently) when the batch is sent: the newest message of a pair stands for all of
    them, and an old exit arriving after an entry sends the entry again. Whatever the
    order, the destination ends in the memberships table's state. Events (trigger
    messages) are sent as they are.
    """
    moment = now or datetime.now(UTC)
    result = BatchResult()
    readable: list[tuple[Mapping[str, Any], OutboundMessage]] = []
    for record in records:
        try:
            message = outbound(record)
            if message.body.get("kind") == "audience_membership" and not all(
                    isinstance(message.body.get(name), str) and message.body[name]
                    for name in ("profile_id", "audience_id")):
                # without its pair it can be neither collapsed nor looked up: it would fail
                # the whole batch on every attempt
                raise KeyError("profile_id or audience_id")
        except (ValueError, KeyError) as exc:
            queue.dead_letter(record, f"unreadable message: {type(exc).__name__}")
            result.dead_lettered += 1
            continue
        readable.append((record, message))
    kept, superseded = _collapse(readable)
    result.delivered += len(superseded)  # deleted with the batch: the kept message carries their state
    wanted: dict[str, set[str]] = {}
    for _, message in kept:
        if message.body.get("kind") == "audience_membership":
            wanted.setdefault(str(message.body["profile_id"]), set()).add(str(message.body["audience_id"]))
    states = current(wanted) if wanted else {}
    to_send: list[tuple[Mapping[str, Any], OutboundMessage]] = []
    for record, message in kept:
        body = message.body
        if body.get("kind") == "audience_membership":
            member = bool(states.get(str(body["profile_id"]), {}).get(str(body["audience_id"]), False))
            transition = "entered" if member else "exited"
            if transition != body.get("transition"):
                body = {**body, "transition": transition,
                        "event": "Audience Entered" if member else "Audience Exited"}
                message = OutboundMessage(message.deduplication_id, body)
        to_send.append((record, message))
    if not to_send:
        return result
    try:
        outcomes = destination.send([message for _, message in to_send])
    except Exception as exc:  # the destination's own failure: everything is tried again
        outcomes = [Outcome("retry", f"destination error: {type(exc).__name__}")] * len(to_send)
    for (record, _), outcome in zip(to_send, outcomes, strict=True):
        _settle(record, outcome, queue, policy, moment, result)
    return result


def _settle(record: Mapping[str, Any], outcome: Outcome, queue: QueueOperations, policy: RetryPolicy,
            moment: datetime, result: BatchResult) -> float | None:
    """Delete, retry or dead-letter one record; the retry's delay when it is retried."""
    if outcome.delivered:
        result.delivered += 1
        return None
    attempt = max(int(_attribute(record, "ApproximateReceiveCount", "1")), 1) - 1
    first_ms = _attribute(record, "ApproximateFirstReceiveTimestamp")
    first = datetime.fromtimestamp(int(first_ms) / 1000, UTC) if first_ms.isdigit() else moment
    delay = policy.next_delay(attempt, outcome, first, moment)
    if delay is None:
        queue.dead_letter(record, give_up_reason(outcome, attempt + 1, policy.window))
        result.dead_lettered += 1
        result.last_error = outcome.reason
        return None
    queue.retry_later(record["receiptHandle"], delay)
    result.failures.append(record["messageId"])
    result.retried += 1
    result.last_error = outcome.reason
    return delay
