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
from collections.abc import Mapping, Sequence
from typing import Any

from cdp.resources import destination_queue_name

MAX_VISIBILITY_S = 12 * 3600
MAX_ATTRIBUTE = 256  # characters of the reason kept in the attribute


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
    """The router's side: ``SendMessageBatch`` (10 entries a request) to each destination's
    queue, found by name (``cdp.resources.destination_queue_name``) and cached."""

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
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            entries = []
            for index, message in enumerate(chunk):
                entry: dict[str, Any] = {"Id": str(index),
                                         "MessageBody": json.dumps(message.body, separators=(",", ":"))}
                if fifo:
                    entry["MessageGroupId"] = message.message_group_id
                    entry["MessageDeduplicationId"] = message.deduplication_id
                entries.append(entry)
            response = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)
            failed = response.get("Failed") or []
            if failed:
                codes = sorted({str(f.get("Code")) for f in failed})
                raise QueueSendFailed(f"{len(failed)} message(s) to destination {destination.id!r} refused: "
                                      f"{', '.join(codes)}")
