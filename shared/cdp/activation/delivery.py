"""Delivery policy: what an attempt's answer means, and when to try again.

Every destination Lambda (issue 5) sends a batch, then asks this module what each answer
means (``classify``) and, for the ones to try again, when (``RetryPolicy.next_delay``).
The Lambda turns the answer into SQS operations: a delivered message is deleted; a
retried one is made visible again after the delay (``ChangeMessageVisibility``, at most
12 hours); a permanent failure, or a retry past the window, goes to the destination's
dead-letter queue with its reason.

The rules (Segment's, where it documents them):

* 2xx: delivered.
* 408, 425, 429, 5xx (but 501 and 505), timeouts and connection errors: try again, with
  exponential backoff and full jitter (``base * 2**attempt``, capped), or after the
  ``Retry-After`` the destination sent (seconds or an HTTP date; honoured up to the cap
  and the window's end), for a window from the first attempt (default 4 hours, as
  Segment retries), then give up: the dead-letter queue, with the last reason.
* Any other 4xx (and 501, 505): it will never succeed as it is (a bad request, a wrong
  credential, a missing resource): the dead-letter queue at once, with the status and
  the destination's short message. ``cdp destinations redrive`` puts such messages back
  once the cause is fixed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

Verdict = Literal["delivered", "retry", "permanent"]
RETRYABLE_STATUSES = frozenset({408, 425, 429})
PERMANENT_SERVER_STATUSES = frozenset({501, 505})  # not implemented / version not supported
MAX_REASON = 300  # characters of a destination's answer kept as the reason


@dataclass(frozen=True)
class OutboundMessage:
    """What a destination sends for one change or event (a router message's body), and
    the id that stays the same on every attempt (its deduplication id)."""

    deduplication_id: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What one attempt's answer means for one message."""

    verdict: Verdict
    reason: str = ""
    retry_after_s: float | None = None  # what the destination asked for, if anything

    @property
    def delivered(self) -> bool:
        return self.verdict == "delivered"


class Destination(Protocol):
    """Every destination: a batch of messages in, one outcome per message out, in order."""

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]: ...


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date);
    None when absent or unreadable (never negative)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # "²" is a digit to str.isdigit, not to int()
        return float(int(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - now).total_seconds(), 0.0)


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 1] + "…"


def classify(status: int | None, headers: Mapping[str, str] | None = None, body: str = "",
             error: str | None = None, now: datetime | None = None) -> Outcome:
    """The meaning of one HTTP answer (``status``, ``headers``, ``body``) or of a failure to
    get one (``error``: a timeout, a refused connection)."""
    if status is None:
        return Outcome("retry", _short(f"no answer: {error or 'unknown error'}"))
    reason = _short(f"HTTP {status}: {body}" if body else f"HTTP {status}")
    if 200 <= status < 300:
        return Outcome("delivered")
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    retry_after = parse_retry_after(lowered.get("retry-after"), now or datetime.now(UTC))
    if status in RETRYABLE_STATUSES or (status >= 500 and status not in PERMANENT_SERVER_STATUSES):
        return Outcome("retry", reason, retry_after)
    return Outcome("permanent", reason)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again: exponential backoff with full jitter within a window."""

    window: timedelta = timedelta(hours=4)
    base_s: float = 5.0
    cap_s: float = 900.0  # 15 minutes between attempts at most

    def next_delay(self, attempt: int, outcome: Outcome, first_attempt_at: datetime, now: datetime,
                   rng: random.Random | None = None) -> float | None:
        """Seconds until attempt ``attempt + 1`` (``attempt`` counts from 0), or None: give up
        (not retryable, or the window has passed or would pass before the next attempt)."""
        if outcome.verdict != "retry":
            return None
        left = (first_attempt_at + self.window - now).total_seconds()
        if left <= 0:
            return None
        if outcome.retry_after_s is not None:
            delay = min(outcome.retry_after_s, self.cap_s)
        else:
            ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt, 30))
            delay = (rng or random).uniform(0, ceiling)
        return delay if delay < left else None


def give_up_reason(outcome: Outcome, attempts: int, window: timedelta) -> str:
    """The reason stored with a message sent to the dead-letter queue."""
    if outcome.verdict == "permanent":
        return f"permanent failure: {outcome.reason}"
    hours = window.total_seconds() / 3600
    return f"retry window of {hours:g} h exhausted after {attempts} attempt(s); last: {outcome.reason}"
