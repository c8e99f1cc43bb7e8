"""Lambda event filtering (an event source mapping's ``FilterCriteria``), the subset the CDP uses.

A mapping with filter criteria invokes its function only with the records that match
at least one filter; the others are dropped (and checkpointed) without an
invocation. A filter's ``Pattern`` is an EventBridge-style JSON pattern matched
against the record as the function would receive it (for DynamoDB Streams:
``{"eventName": ..., "dynamodb": {"Keys": ..., "NewImage": ...}}``).

Supported: nested objects, lists of alternatives (OR) holding exact values
(string, number, boolean, null), ``{"prefix": "..."}``, ``{"exists": true|false}``
and ``{"anything-but": value | [values]}`` for strings and numbers. A value in the
record that is a list matches when any element does. Any other operator is refused
when the criteria are built, so a pattern is never silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_MISSING = object()
_OPERATORS = frozenset({"prefix", "exists", "anything-but"})


class InvalidFilterPattern(ValueError):
    """A pattern Lambda would refuse, or one this emulation does not support."""


def _validate(pattern: Any, path: str) -> None:
    if not isinstance(pattern, dict) or not pattern:
        raise InvalidFilterPattern(f"{path or 'pattern'}: must be a non-empty JSON object")
    for key, value in pattern.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            _validate(value, where)
        elif isinstance(value, list):
            if not value:
                raise InvalidFilterPattern(f"{where}: an empty list matches nothing")
            for matcher in value:
                _validate_matcher(matcher, where)
        else:
            raise InvalidFilterPattern(f"{where}: a leaf must be a list of values or matchers")


def _validate_matcher(matcher: Any, where: str) -> None:
    if not isinstance(matcher, dict):
        if isinstance(matcher, list):
            raise InvalidFilterPattern(f"{where}: nested lists are not allowed")
        return
    if len(matcher) != 1 or next(iter(matcher)) not in _OPERATORS:
        raise InvalidFilterPattern(f"{where}: unsupported matcher {json.dumps(matcher)} "
                                   f"(supported: {', '.join(sorted(_OPERATORS))})")
    [(operator, operand)] = matcher.items()
    if operator == "prefix" and not isinstance(operand, str):
        raise InvalidFilterPattern(f"{where}: prefix takes a string")
    if operator == "exists" and not isinstance(operand, bool):
        raise InvalidFilterPattern(f"{where}: exists takes true or false")
    if operator == "anything-but":
        values = operand if isinstance(operand, list) else [operand]
        if not values or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise InvalidFilterPattern(f"{where}: anything-but takes a string, a number or a list of them")


def _same(expected: Any, actual: Any) -> bool:
    # JSON equality: 1 and true are different values, 1 and 1.0 the same.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return bool(expected == actual)


def _leaf_matches(matcher: Any, actual: Any) -> bool:
    """One alternative of a leaf against a present, scalar value."""
    if not isinstance(matcher, dict):
        return _same(matcher, actual)
    [(operator, operand)] = matcher.items()
    if operator == "prefix":
        return isinstance(actual, str) and actual.startswith(operand)
    if operator == "exists":
        return bool(operand)
    excluded = operand if isinstance(operand, list) else [operand]
    if isinstance(actual, bool) or not isinstance(actual, str | int | float):
        return False
    return not any(_same(value, actual) for value in excluded)


def _leaf(matchers: list[Any], actual: Any) -> bool:
    if actual is _MISSING or isinstance(actual, dict):
        # Only {"exists": false} matches a missing leaf; an object is not a leaf.
        return actual is _MISSING and any(m == {"exists": False} for m in matchers)
    values = actual if isinstance(actual, list) else [actual]
    return any(_leaf_matches(m, v) for m in matchers for v in values if not isinstance(v, dict | list))


def pattern_matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """Whether ``record`` (JSON) matches ``pattern``: every key of the pattern must match."""
    if not isinstance(record, dict):
        return False
    for key, expected in pattern.items():
        actual = record.get(key, _MISSING)
        if isinstance(expected, dict):
            if isinstance(actual, list):
                if not any(pattern_matches(expected, item) for item in actual):
                    return False
            elif not pattern_matches(expected, {} if actual is _MISSING else actual):
                return False  # a missing object: only {"exists": false} below it can match
        elif not _leaf(expected, actual):
            return False
    return True


@dataclass(frozen=True)
class FilterCriteria:
    """A mapping's ``FilterCriteria``: a record passes when any filter matches (none: all pass)."""

    patterns: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Iterable[str | Mapping[str, Any]]) -> FilterCriteria:
        """Criteria from patterns given as JSON strings (as in ``Filters[].Pattern``) or objects."""
        parsed: list[dict[str, Any]] = []
        for pattern in patterns:
            value = json.loads(pattern) if isinstance(pattern, str) else json.loads(json.dumps(pattern))
            _validate(value, "")
            parsed.append(value)
        return cls(tuple(parsed))

    @classmethod
    def from_api(cls, criteria: Mapping[str, Any] | None) -> FilterCriteria:
        """Criteria from the API's shape: ``{"Filters": [{"Pattern": "<json>"}]}``."""
        filters = (criteria or {}).get("Filters") or []
        return cls.from_patterns(f["Pattern"] for f in filters)

    def matches(self, record: Mapping[str, Any]) -> bool:
        return not self.patterns or any(pattern_matches(p, record) for p in self.patterns)
