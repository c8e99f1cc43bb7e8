"""The delivery log: per destination and hour, what happened to its messages.

Each destination invocation adds its counts to the hour's item (one ``UpdateItem`` with
``ADD``, so concurrent invocations and retries of the log write only add): attempts,
delivered, retried, dead-lettered, held (waiting behind a retried message of the same
profile), not sent (kept back by consent; counted as delivered too: the message is
done), the last error (its kind and the destination's short answer, never personal
data), and a latency histogram: seconds from the change or event (``at`` of an audience
change, ``receivedAt`` of an event) to its delivery, in fixed buckets, from which
percentiles are read back (the bucket's upper bound: an overestimate of at most one
bucket). ``cdp destinations status`` and the admin API read it with the queues' depths.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

# Upper bounds (seconds) of the latency buckets; the last bucket is everything above.
LATENCY_BOUNDS_S: tuple[float, ...] = (0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
COUNTERS = ("attempts", "delivered", "retried", "dead_lettered", "held", "not_sent")
# Batch syncs' figures, per hour: invocations that ran a sync, and their adds, removes and
# failed changes; with the last run of each audience under ``sync:<audience>``.
SYNC_COUNTERS = ("sync_runs", "sync_adds", "sync_removes", "sync_failed")
SYNC_PREFIX = "sync:"


def bucket_of(seconds: float) -> int:
    """The index of the latency bucket ``seconds`` falls in (``len(LATENCY_BOUNDS_S)``: above all)."""
    return bisect.bisect_left(LATENCY_BOUNDS_S, max(seconds, 0.0))


def bucket_name(index: int) -> str:
    return f"lat_{index:02d}"


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def origin_time(body: Mapping[str, Any]) -> datetime | None:
    """When the message's change or event happened (None when it does not say)."""
    if body.get("kind") == "event":
        event = body.get("event") or {}
        return _parse(event.get("receivedAt")) or _parse(event.get("timestamp"))
    return _parse(body.get("at"))


@dataclass
class DeliveryCounts:
    """One invocation's figures for the log."""

    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    held: int = 0
    not_sent: int = 0  # kept back by consent (counted in delivered too: the message is done)
    last_error: str = ""
    latencies: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_S) + 1))

    def observe_latency(self, seconds: float) -> None:
        self.latencies[bucket_of(seconds)] += 1

    def observe(self, bodies: Iterable[Mapping[str, Any]], now: datetime) -> None:
        """Latency of delivered messages."""
        for body in bodies:
            start = origin_time(body)
            if start is not None:
                self.observe_latency((now - start).total_seconds())

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in COUNTERS)


def percentile(histogram: Sequence[int], fraction: float) -> float | None:
    """The upper bound of the bucket holding the ``fraction`` quantile (None: no data;
    ``inf`` when it is above the last bound)."""
    total = sum(histogram)
    if total == 0:
        return None
    # Nearest rank, with the fraction as written (0.07 of 100 is rank 7; in binary
    # floating point 0.07 * 100 is 7.000000000000001 and would be rank 8).
    rank = max(1, math.ceil(Fraction(repr(float(fraction))) * total))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank and count:
            return LATENCY_BOUNDS_S[index] if index < len(LATENCY_BOUNDS_S) else float("inf")
    return float("inf")


def summary(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over some hours' items, with latency p50/p99, the newest last error and each
    audience's newest batch sync run."""
    totals = dict.fromkeys(COUNTERS + SYNC_COUNTERS, 0)
    syncs: dict[str, dict[str, Any]] = {}
    histogram = [0] * (len(LATENCY_BOUNDS_S) + 1)
    last_error, last_error_at = "", ""
    for item in items:
        for name in COUNTERS + SYNC_COUNTERS:
            totals[name] += int(item.get(name) or 0)
        for name, run in item.items():
            if name.startswith(SYNC_PREFIX) and isinstance(run, Mapping):
                audience_id = name[len(SYNC_PREFIX):]
                if str(run.get("at") or "") >= str(syncs.get(audience_id, {}).get("at") or ""):
                    syncs[audience_id] = {k: int(v) if isinstance(v, Decimal) else v for k, v in run.items()}
        for index in range(len(histogram)):
            histogram[index] += int(item.get(bucket_name(index)) or 0)
        at = str(item.get("last_error_at") or "")
        if at and at > last_error_at:
            last_error, last_error_at = str(item.get("last_error") or ""), at
    return {**totals, "latency_p50_s": percentile(histogram, 0.5), "latency_p99_s": percentile(histogram, 0.99),
            "last_error": last_error or None, "last_error_at": last_error_at or None,
            "syncs": dict(sorted(syncs.items()))}
