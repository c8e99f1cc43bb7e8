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

import math
from collections.abc import Mapping
from typing import Any

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
