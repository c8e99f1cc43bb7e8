"""A destination's SQS FIFO queue and dead-letter queue, for ``cdp.activation.runner``.

* ``retry_later``: ``ChangeMessageVisibility`` of the received message to the policy's
  delay (SQS allows at most 12 hours), so it comes back then, and the later messages of
  its group wait behind it (FIFO).
* ``dead_letter``: the message, as it was, to the dead-letter queue (same message group
  and deduplication id, so a repeat within SQS's 5-minute window is dropped), with the
  reason, the original message id and the attempts as message attributes; the runner
  does not report it as failed, so Lambda deletes it from the queue.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cdp.resources import destination_queue_name

MAX_VISIBILITY_S = 12 * 3600
MAX_ATTRIBUTE = 256  # characters of the reason kept in the attribute
MAX_ENTRIES = 10  # SendMessageBatch: entries a request
# SendMessageBatch: the request's message bodies together. SQS has allowed 1 MiB since
# 2025, but a queue's MaximumMessageSize (and older regions' batch limit) can be 256 KiB;
# ten triggered events of up to 32 KB each would not fit in one request.
MAX_BATCH_BYTES = 256 * 1024


class DestinationQueues:
    def __init__(self, sqs: Any, queue_url: str, dead_letter_url: str) -> None:
        self._sqs = sqs
        self._queue = queue_url
        self._dead_letters = dead_letter_url

    def retry_later(self, receipt_handle: str, delay_s: float) -> None:
        self._sqs.change_message_visibility(QueueUrl=self._queue, ReceiptHandle=receipt_handle,
                                            VisibilityTimeout=min(max(math.ceil(delay_s), 0), MAX_VISIBILITY_S))

    def dead_letter(self, record: Mapping[str, Any], reason: str) -> None:
        attributes = record.get("attributes") or {}
        request: dict[str, Any] = {
            "QueueUrl": self._dead_letters, "MessageBody": record["body"],
            "MessageAttributes": {
                "reason": {"DataType": "String", "StringValue": reason[:MAX_ATTRIBUTE]},
                "source_message_id": {"DataType": "String", "StringValue": str(record["messageId"])},
                "attempts": {"DataType": "Number", "StringValue": str(attributes.get("ApproximateReceiveCount", 1))},
            },
        }
        if self._dead_letters.endswith(".fifo"):
            request["MessageGroupId"] = attributes.get("MessageGroupId") or "ungrouped"
            request["MessageDeduplicationId"] = attributes.get("MessageDeduplicationId") or str(record["messageId"])
        self._sqs.send_message(**request)


class QueueSendFailed(RuntimeError):
    """SQS refused some entries: the router's batch fails and is retried (FIFO
    deduplication makes the entries that did go in a no-op the second time)."""


class DestinationQueueSender:
    """The router's side: ``SendMessageBatch`` (10 entries and 256 KiB a request) to each
    destination's queue, found by name (``cdp.resources.destination_queue_name``) and cached."""

    def __init__(self, sqs: Any, prefix: str) -> None:
        self._sqs = sqs
        self._prefix = prefix
        self._urls: dict[str, str] = {}

    def queue_url(self, destination: Any) -> str:
        name = destination_queue_name(self._prefix, destination.id, destination.type)
        url = self._urls.get(name)
        if url is None:
            url = self._urls[name] = str(self._sqs.get_queue_url(QueueName=name)["QueueUrl"])
        return url

    def send(self, destination: Any, messages: Sequence[Any]) -> None:
        url = self.queue_url(destination)
        fifo = url.endswith(".fifo")
        for entries in _requests(messages, fifo):
            response = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)
            failed = response.get("Failed") or []
            if failed:
                codes = sorted({str(f.get("Code")) for f in failed})
                raise QueueSendFailed(f"{len(failed)} message(s) to destination {destination.id!r} refused: "
                                      f"{', '.join(codes)}")


def _requests(messages: Sequence[Any], fifo: bool) -> Iterator[list[dict[str, Any]]]:
    """The messages as ``SendMessageBatch`` entry lists, in order, each at most
    ``MAX_ENTRIES`` entries and ``MAX_BATCH_BYTES`` of bodies (a single larger message goes
    alone, and SQS's answer for it decides)."""
    entries: list[dict[str, Any]] = []
    size = 0
    for message in messages:
        body = json.dumps(message.body, separators=(",", ":"))
        body_bytes = len(body.encode())
        if entries and (len(entries) == MAX_ENTRIES or size + body_bytes > MAX_BATCH_BYTES):
            yield entries
            entries, size = [], 0
        entry: dict[str, Any] = {"Id": str(len(entries)), "MessageBody": body}
        if fifo:
            entry["MessageGroupId"] = message.message_group_id
            entry["MessageDeduplicationId"] = message.deduplication_id
        entries.append(entry)
        size += body_bytes
    if entries:
        yield entries
