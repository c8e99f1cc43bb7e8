"""Operating destinations: their queues' depths, dead letters and the delivery log, and
the redrive of dead letters (``cdp destinations ...``, the admin API).

Destinations are found by their queues' names (``cdp.resources.destination_queue_name``:
``<prefix><id>[-dlq][.fifo]``), so the CLI needs no copy of the configuration.

A redriven message goes back to its destination's queue with its body, its message group
(a profile's messages stay in one group) and a new deduplication id (SQS would drop a
resend of the old one within 5 minutes), while its ``idempotency_key`` attribute keeps the
original id, which the destination sends as the ``Idempotency-Key``: a receiver that did
get it (the destination answered after the window ended) still drops the repeat. Its
attempts and retry window start again. A redriven audience change may arrive after a
later change of the same profile: its ``version`` tells which is newer.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cdp.resources import destination_of_queue, destination_queue_name

IDEMPOTENCY_ATTRIBUTE = "idempotency_key"
_DEPTHS = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
           "ApproximateNumberOfMessagesDelayed")


@dataclass(frozen=True)
class DestinationQueuesOf:
    destination_id: str
    queue_url: str
    dead_letter_url: str | None


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    reason: str
    attempts: str
    sent_at: str
    body: Mapping[str, Any]


def destination_queues(sqs: Any, prefix: str) -> dict[str, DestinationQueuesOf]:
    """Every destination of the deployment, by id, from its queues' names."""
    urls: list[str] = []
    request: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 1000}
    while True:
        page = sqs.list_queues(**request)
        urls += page.get("QueueUrls", [])
        if not page.get("NextToken"):
            break
        request["NextToken"] = page["NextToken"]
    queues: dict[str, str] = {}
    dead: dict[str, str] = {}
    for url in urls:
        name = url.rsplit("/", 1)[-1]
        if not name.startswith(prefix):
            continue
        target = dead if name.removesuffix(".fifo").endswith("-dlq") else queues
        target[destination_of_queue(name, prefix)] = url
    return {d: DestinationQueuesOf(d, url, dead.get(d)) for d, url in sorted(queues.items())}


def depths(sqs: Any, url: str | None) -> dict[str, int]:
    """Waiting, in flight (being delivered or waiting out a retry delay) and delayed."""
    if url is None:
        return {}
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(_DEPTHS))["Attributes"]
    return {"waiting": int(attributes.get(_DEPTHS[0], 0)), "in_flight": int(attributes.get(_DEPTHS[1], 0)),
            "delayed": int(attributes.get(_DEPTHS[2], 0))}


def _receive(sqs: Any, url: str, visibility: int) -> list[dict[str, Any]]:
    response = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=visibility,
                                   WaitTimeSeconds=0, MessageAttributeNames=["All"],
                                   AttributeNames=["All"])
    return list(response.get("Messages", []))


def _attribute(message: Mapping[str, Any], name: str) -> str:
    value = (message.get("MessageAttributes") or {}).get(name) or {}
    return str(value.get("StringValue", ""))


def peek_dead_letters(sqs: Any, url: str, limit: int = 100) -> list[DeadLetter]:
    """Dead letters with their reasons, left on the queue (visible again once read)."""
    found: dict[str, DeadLetter] = {}
    handles: list[str] = []
    while len(found) < limit:
        messages = _receive(sqs, url, 30)
        if not messages:
            break
        for message in messages:
            handles.append(message["ReceiptHandle"])
            sent = int((message.get("Attributes") or {}).get("SentTimestamp", "0")) / 1000
            try:
                body = json.loads(message["Body"])
            except ValueError:
                body = {}
            found.setdefault(message["MessageId"], DeadLetter(
                message_id=message["MessageId"], reason=_attribute(message, "reason"),
                attempts=_attribute(message, "attempts"),
                sent_at=datetime.fromtimestamp(sent, UTC).isoformat(timespec="seconds"),
                body=body if isinstance(body, dict) else {}))
    for handle in handles:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
    return list(found.values())[:limit]


def _redrive_dedup_id(original: str) -> str:
    token = uuid.uuid4().hex[:12]
    candidate = f"{original}~r{token}"
    return candidate if len(candidate) <= 128 else "r-" + hashlib.sha256(candidate.encode()).hexdigest()


def redrive(sqs: Any, queues: DestinationQueuesOf, max_messages: int | None = None,
            deadline_s: float = 300.0) -> int:
    """Move dead letters back to the destination's queue; returns how many."""
    if queues.dead_letter_url is None:
        return 0
    fifo = queues.queue_url.endswith(".fifo")
    moved = 0
    stop_at = time.monotonic() + deadline_s
    for messages in _batches(sqs, queues.dead_letter_url, stop_at):
        for message in messages:
            if max_messages is not None and moved >= max_messages:
                return moved
            attributes = message.get("Attributes") or {}
            original = _attribute(message, IDEMPOTENCY_ATTRIBUTE) or attributes.get("MessageDeduplicationId") \
                or message["MessageId"]
            request: dict[str, Any] = {
                "QueueUrl": queues.queue_url, "MessageBody": message["Body"],
                "MessageAttributes": {IDEMPOTENCY_ATTRIBUTE: {"DataType": "String", "StringValue": original}}}
            if fifo:
                request["MessageGroupId"] = attributes.get("MessageGroupId") or "ungrouped"
                request["MessageDeduplicationId"] = _redrive_dedup_id(original)
            sqs.send_message(**request)
            sqs.delete_message(QueueUrl=queues.dead_letter_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    return moved


def _batches(sqs: Any, url: str, stop_at: float) -> Iterator[list[dict[str, Any]]]:
    while time.monotonic() < stop_at:
        messages = _receive(sqs, url, 60)
        if not messages:
            return
        yield messages


def queues_of(sqs: Any, prefix: str, destinations: Mapping[str, str]) -> dict[str, DestinationQueuesOf]:
    """The queues of known destinations (id -> type), by name (``GetQueueUrl``): what a
    function without ``ListQueues`` (the admin API) uses."""
    found: dict[str, DestinationQueuesOf] = {}
    for destination_id, destination_type in sorted(destinations.items()):
        try:
            url = sqs.get_queue_url(QueueName=destination_queue_name(prefix, destination_id, destination_type))
            dead = sqs.get_queue_url(QueueName=destination_queue_name(prefix, destination_id, destination_type,
                                                                      dead_letter=True))
        except sqs.exceptions.QueueDoesNotExist:
            continue
        found[destination_id] = DestinationQueuesOf(destination_id, str(url["QueueUrl"]), str(dead["QueueUrl"]))
    return found


def destination_status(sqs: Any, log: Any, queues: DestinationQueuesOf, hours: int = 24,
                       now: datetime | None = None) -> dict[str, Any]:
    """One destination's delivery log totals over ``hours`` with its queues' depths."""
    return {"destination": queues.destination_id, **log.status(queues.destination_id, hours, now),
            "queue": depths(sqs, queues.queue_url),
            "dead_letters": depths(sqs, queues.dead_letter_url).get("waiting", 0)}


def deployed_destinations(text: str) -> dict[str, str]:
    """``CDP_DESTINATION_TYPES`` (``"<id>:<type>,..."``) as id -> type."""
    found: dict[str, str] = {}
    for part in text.split(","):
        destination_id, _, destination_type = part.strip().partition(":")
        if destination_id and destination_type:
            found[destination_id] = destination_type
    return found


def destination_types_text(destinations: Any) -> str:
    """The inverse of ``deployed_destinations`` for a list of ``DestinationConfig``."""
    return ",".join(f"{d.id}:{d.type}" for d in destinations)
