"""A destination Lambda's work on one batch of its FIFO queue (per-message destinations).

``deliver_records`` takes the SQS records Lambda delivers (its event's ``Records``, in
queue order), sends each through the destination and decides, with the delivery policy
(``cdp.activation.delivery``), what becomes of it:

* delivered: nothing to do (Lambda deletes what is not reported as failed);
* to retry: made visible again after the policy's delay (``ChangeMessageVisibility``) and
  reported as a batch item failure; the later records of the same message group (the same
  profile) are reported too, without being sent, so a profile's messages are delivered in
  order (an exit never before its enter), while other profiles go on;
* permanent, or retried past the window: sent with its reason to the destination's
  dead-letter queue and removed from the queue (not reported).

The attempt count and the first attempt's time are the SQS record's own
(``ApproximateReceiveCount``, ``ApproximateFirstReceiveTimestamp``): no state is kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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

    def response(self) -> dict[str, list[dict[str, str]]]:
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in self.failures]}


def _attribute(record: Mapping[str, Any], name: str, default: str = "") -> str:
    return str((record.get("attributes") or {}).get(name, default))


def outbound(record: Mapping[str, Any]) -> OutboundMessage:
    """The message a record carries (its body is the router's JSON)."""
    dedup = _attribute(record, "MessageDeduplicationId") or str(record["messageId"])
    return OutboundMessage(dedup, json.loads(record["body"]))


def deliver_records(records: Sequence[Mapping[str, Any]], destination: Destination, queue: QueueOperations,
                    policy: RetryPolicy, now: datetime | None = None) -> BatchResult:
    """Deliver one batch; see the module docstring."""
    moment = now or datetime.now(UTC)
    result = BatchResult()
    held_groups: set[str] = set()
    for record in records:
        group = _attribute(record, "MessageGroupId")
        if group and group in held_groups:
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
        if outcome.delivered:
            result.delivered += 1
            continue
        attempt = max(int(_attribute(record, "ApproximateReceiveCount", "1")), 1) - 1
        first_ms = _attribute(record, "ApproximateFirstReceiveTimestamp")
        first = datetime.fromtimestamp(int(first_ms) / 1000, UTC) if first_ms.isdigit() else moment
        delay = policy.next_delay(attempt, outcome, first, moment)
        if delay is None:
            queue.dead_letter(record, give_up_reason(outcome, attempt + 1, policy.window))
            result.dead_lettered += 1
            continue
        queue.retry_later(record["receiptHandle"], delay)
        result.failures.append(record["messageId"])
        result.retried += 1
        if group:
            held_groups.add(group)
    return result
