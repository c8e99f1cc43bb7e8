"""The webhook destination: each message POSTed as JSON to the customer's URL, signed.

One small interface for every destination (``Destination.send``): a batch of messages
in, one ``cdp.activation.delivery.Outcome`` per message out, in order; the destination
Lambda turns the outcomes into SQS operations (delete, retry later, dead-letter).

Each request carries:

* ``Content-Type: application/json``, the message body as compact JSON;
* ``X-CDP-Signature``: ``t=<unix seconds>,v1=<HMAC-SHA256>`` over ``"<t>.<body>"`` with
  each configured secret (``cdp.activation.webhook_signing``; two during a rotation), so
  the receiver can check the sender and refuse replays older than its tolerance;
* ``Idempotency-Key``: the message's deduplication id (the same for every attempt and
  every redelivery of one change or event), so a receiver can drop repeats: delivery is
  at least once;
* the configured custom headers (they cannot replace the three above).

Answers are classified by ``cdp.activation.delivery.classify``; a timeout or a refused
connection is "no answer" (retried). The secrets come from Secrets Manager or SSM by
name at run time (the caller's business), never from configuration values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3

from cdp.activation.delivery import Destination, OutboundMessage, Outcome
from cdp.activation.http_post import post_json
from cdp.activation.webhook_signing import SIGNATURE_HEADER, sign_rotation

USER_AGENT = "cdp-webhook/1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RESERVED_HEADERS = frozenset({"content-type", SIGNATURE_HEADER.lower(), IDEMPOTENCY_HEADER.lower()})


@dataclass
class WebhookDestination:
    url: str
    secrets: Sequence[bytes]
    headers: Mapping[str, str] = field(default_factory=dict)
    # 5 s: ten slow answers of a FIFO batch (one request each) fit the function's 120 s
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.time
    http: Any = None  # a urllib3.PoolManager (one per warm function)

    def __post_init__(self) -> None:
        if not self.secrets:
            raise ValueError("a webhook destination needs at least one signing secret")
        clashing = sorted(h for h in self.headers if h.lower() in RESERVED_HEADERS)
        if clashing:
            raise ValueError(f"custom headers may not replace {', '.join(clashing)}")
        if self.http is None:
            self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=self.timeout_s))

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """POST each message (one request each, in order); one outcome per message."""
        return [self._post(message) for message in messages]

    def _post(self, message: OutboundMessage) -> Outcome:
        body = json.dumps(message.body, separators=(",", ":"), sort_keys=True).encode("utf-8")
        headers = {**self.headers, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                   SIGNATURE_HEADER: sign_rotation(list(self.secrets), body, int(self.clock())),
                   IDEMPOTENCY_HEADER: message.deduplication_id}
        return post_json(self.http, self.url, body, headers)


__all__ = ["Destination", "OutboundMessage", "WebhookDestination"]


def signing_secrets(value: str) -> list[bytes]:
    """The signing secrets stored under the destination's secret name: one secret, or a JSON
    list of them during a rotation (``["new", "old"]``: requests carry a signature by each)."""
    text = value.strip()
    if text.startswith("["):
        loaded = json.loads(text)
        if not isinstance(loaded, list) or not loaded or not all(isinstance(s, str) and s for s in loaded):
            raise ValueError("the webhook secret is a JSON list but not of non-empty strings")
        return [s.encode("utf-8") for s in loaded]
    if not text:
        raise ValueError("the webhook secret is empty")
    return [text.encode("utf-8")]


def build(config: Any, secret: Callable[[str], str], aws: Callable[[str], Any]) -> WebhookDestination:
    """The destination of a ``webhook`` configuration (the registry's factory)."""
    settings = config.settings
    if not settings.secret_name:
        raise ValueError(f"webhook destination {config.id!r} has no secret_name: requests are always signed")
    return WebhookDestination(url=settings.url, secrets=signing_secrets(secret(settings.secret_name)),
                              headers=dict(settings.headers))
