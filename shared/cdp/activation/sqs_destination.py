"""The Amazon SQS destination: messages sent to a customer's queue.

Each message becomes one SQS message (``SendMessageBatch``, at most 10 a request and
256 KiB a request in total), its body the message body as compact JSON. The profile the
destination Lambda adds is never sent as it is (its traits and identifiers are the
customer's whole record of the person): without a field mapping the body has no
``profile``; with one, it carries ``fields`` (the mapped traits) and nothing else of the
profile.

FIFO queues (the URL ends in ``.fifo``): the message group is the profile id (so a
profile's messages stay in order in the customer's queue too; an event without one uses
its ``userId`` or ``anonymousId``, then the message's deduplication id), the
deduplication id is the message's, the same on every attempt, so SQS drops a repeat sent
within its five-minute deduplication interval. Both go through
:func:`cdp.activation.router.sqs_id`, which hashes ids SQS would refuse. Standard
queues deliver at least once; consumers drop repeats by the body's ``message_id``.

Answers: a message over 256 KiB is dead-lettered unsent. ``SendMessageBatch`` answers
per entry: a failed entry with ``SenderFault`` is dead-lettered with its code (it will
never be accepted as it is), any other failed entry is retried. A failure of the whole
request decides for every entry it carried: throttling and server errors are retried;
a missing queue, a refused permission or a KMS key problem is dead-lettered (fixed by
the customer, then redriven). Reasons name the error code only: never the queue URL
(it names the customer's account) or message content.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from cdp.activation.delivery import Destination, OutboundMessage, Outcome, Verdict
from cdp.activation.destinations import DestinationConfig, SqsSettings
from cdp.activation.router import sqs_id

MAX_ENTRIES = 10
MAX_MESSAGE_BYTES = 256 * 1024  # one message, and the sum of a request's messages
RETRYABLE_CODES = frozenset({
    "ThrottlingException", "Throttling", "RequestThrottled", "RequestThrottledException",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalError", "InternalFailure",
    "KmsThrottled", "KMS.ThrottlingException", "RequestTimeout", "RequestTimeoutException",
})


def _code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code") or "ClientError"), int(status or 0)


def request_outcome(operation: str, exc: ClientError) -> Outcome:
    """What a failed request means: throttles and server errors are retried; anything
    else (``AccessDenied``, ``QueueDoesNotExist``, the ``Kms*`` errors of a queue's
    encryption key) is the customer's to fix, so dead-lettered. The reason names the code."""
    code, status = _code(exc)
    if code in RETRYABLE_CODES or code.endswith("Throttled") or status >= 500:
        return Outcome("retry", f"{operation}: {code}")
    return Outcome("permanent", f"{operation}: {code}")


def _group_id(message: OutboundMessage) -> str:
    body = message.body
    event = body.get("event")
    candidates = [body.get("profile_id")]
    if isinstance(event, Mapping):
        candidates += [event.get("userId"), event.get("anonymousId")]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return sqs_id(candidate)
    return sqs_id(message.deduplication_id)


def outgoing_body(body: Mapping[str, Any], include_fields: bool) -> dict[str, Any]:
    """The body sent: the message without ``profile``; with ``include_fields``, the
    profile's mapped ``fields`` (empty when the profile no longer exists)."""
    sent = {k: v for k, v in body.items() if k != "profile"}
    if include_fields:
        profile = body.get("profile")
        fields = profile.get("fields") if isinstance(profile, Mapping) else None
        sent["fields"] = dict(fields) if isinstance(fields, Mapping) else {}
    return sent


@dataclass
class SqsDestination:
    sqs: Any  # a boto3 SQS client
    queue_url: str  # the customer's queue (in another account: its policy lets this role send)
    include_fields: bool = False  # the destination has a field mapping

    @property
    def fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        chunks: list[list[tuple[int, dict[str, Any]]]] = []
        chunk: list[tuple[int, dict[str, Any]]] = []
        chunk_bytes = 0
        for n, message in enumerate(messages):
            text = json.dumps(outgoing_body(message.body, self.include_fields), separators=(",", ":"),
                              sort_keys=True, ensure_ascii=False, default=str)
            size = len(text.encode("utf-8"))
            if size > MAX_MESSAGE_BYTES:
                outcomes[n] = Outcome("permanent", f"message over SQS's {MAX_MESSAGE_BYTES // 1024} KB")
                continue
            entry: dict[str, Any] = {"Id": str(n), "MessageBody": text}
            if self.fifo:
                entry["MessageGroupId"] = _group_id(message)
                entry["MessageDeduplicationId"] = sqs_id(message.deduplication_id)
            if chunk and (len(chunk) == MAX_ENTRIES or chunk_bytes + size > MAX_MESSAGE_BYTES):
                chunks.append(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append((n, entry))
            chunk_bytes += size
        if chunk:
            chunks.append(chunk)
        for sent in chunks:
            for (n, _), outcome in zip(sent, self._send_batch([entry for _, entry in sent]), strict=True):
                outcomes[n] = outcome
        return [o if o is not None else Outcome("retry", "not sent") for o in outcomes]

    def _send_batch(self, entries: list[dict[str, Any]]) -> list[Outcome]:
        try:
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except ClientError as exc:
            return [request_outcome("SendMessageBatch", exc)] * len(entries)
        except BotoCoreError as exc:  # no answer: timeouts, connection errors
            return [Outcome("retry", f"no answer: {type(exc).__name__}")] * len(entries)
        succeeded = {str(r.get("Id")) for r in response.get("Successful", [])}
        failed = {str(r.get("Id")): r for r in response.get("Failed", [])}
        outcomes = []
        for entry in entries:
            failure = failed.get(entry["Id"])
            if failure is not None:
                code = str(failure.get("Code") or "unknown error")
                verdict: Verdict = "permanent" if failure.get("SenderFault") else "retry"
                outcomes.append(Outcome(verdict, f"SendMessageBatch entry: {code}"))
            elif entry["Id"] in succeeded:
                outcomes.append(Outcome("delivered"))
            else:  # neither list names it: not known to be queued
                outcomes.append(Outcome("retry", "SendMessageBatch entry: no result"))
        return outcomes


def build(config: DestinationConfig, secret: Callable[[str], str], aws: Callable[[str], Any]) -> Destination:
    """The destination of an ``sqs`` configuration (no secret: the Lambda's role may send
    to the queue, by the queue's policy when it is another account's)."""
    settings = config.settings
    if not isinstance(settings, SqsSettings):
        raise TypeError(f"destination {config.id!r} is not an sqs destination")
    return SqsDestination(aws("sqs"), settings.queue_url, include_fields=bool(config.field_mapping))


if TYPE_CHECKING:  # the one destination interface, checked by mypy
    _INTERFACE: Destination = SqsDestination(sqs=None, queue_url="https://sqs.example/q")
