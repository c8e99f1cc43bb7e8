"""Testing one value against a :class:`~cdp.segmentation.definitions.Predicate`.

Shared by trait conditions (the evaluator) and property filters (the aggregates).
A missing value or a value of the wrong type fails every operator except
``not_exists`` (and ``not_equals``, which is "present and different"); nothing
raises. Strings are never read as numbers or dates for numeric comparisons, and
booleans are not numbers. ``equals`` and ``in`` compare by value and JSON type, so
``true`` does not equal ``1`` (``1`` does equal ``1.0``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from cdp.segmentation.definitions import NUMERIC_OPS, Predicate, parse_instant

MISSING: Any = object()


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and type(a) is not dict and a == b


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_utc(text: str) -> datetime:
    """Parse an ISO date-time (``Z`` or an offset; none means UTC) or a date (its midnight UTC)."""
    parsed = parse_instant(text)
    if not isinstance(parsed, datetime):
        return datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _as_instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return to_utc(value)
    except (ValueError, OverflowError):  # not a date, or out of range once moved to UTC
        return None


def passes(predicate: Predicate, value: Any, now: datetime | None = None) -> bool:
    """Whether ``value`` (``MISSING`` when absent) passes ``predicate``; never raises.

    ``within_last_days`` needs ``now``: the value must be a date or date-time from the
    start of the UTC day ``days - 1`` days before ``now`` up to ``now``. ``before`` and
    ``after`` with a date (``2026-01-01``) compare UTC days; with a date-time, instants.
    """
    op = predicate.op
    if op == "exists":
        return value is not MISSING and value is not None
    if op == "not_exists":
        return value is MISSING or value is None
    if value is MISSING or value is None:
        return False
    if op == "equals":
        return _same(value, predicate.value)
    if op == "not_equals":
        return not _same(value, predicate.value)
    if op == "in":
        return any(_same(value, candidate) for candidate in predicate.values or ())
    if op == "contains":
        if isinstance(value, str):
            return isinstance(predicate.value, str) and predicate.value in value
        if isinstance(value, list):
            return any(_same(item, predicate.value) for item in value)
        return False
    if op == "starts_with":
        return isinstance(value, str) and isinstance(predicate.value, str) and value.startswith(predicate.value)
    if op in NUMERIC_OPS:
        if not _is_number(value):
            return False
        bound = predicate.value
        assert isinstance(bound, int | float)
        return {"gt": value > bound, "gte": value >= bound, "lt": value < bound, "lte": value <= bound}[op]
    instant = _as_instant(value)
    if instant is None:
        return False
    if op in ("before", "after"):
        assert isinstance(predicate.value, str)
        bound_value = parse_instant(predicate.value)
        if isinstance(bound_value, datetime):
            moment = to_utc(predicate.value)
            return instant < moment if op == "before" else instant > moment
        day = instant.date()
        return day < bound_value if op == "before" else day > bound_value
    # within_last_days
    if now is None or predicate.days is None:
        return False
    now_utc = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    first_day: date = now_utc.date() - timedelta(days=predicate.days - 1)
    return first_day <= instant.date() and instant <= now_utc


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path (``a.b``; digits index lists), or ``MISSING``."""
    current = data
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current
