"""The segmentation definition language: audiences and computed traits as JSON.

Every node of a condition is a pydantic model in a union discriminated by ``type``:

- ``trait``: a profile trait tested with an operator (``{"type": "trait", "trait":
  "plan", "op": "equals", "value": "pro"}``);
- ``account``: the same test on the traits of the profile's accounts (B2B); true when
  any account matches;
- ``computed_trait``: the same test on the value of a computed trait (by id);
- ``event``: events of a type (``track``, ``page``, ``screen``) and name, with property
  filters, counted over a window and compared (at least / at most / exactly N times);
  "has not performed" is ``exactly 0``;
- ``account_activity``: true when any of the profile's accounts has at least / at most /
  exactly ``n`` distinct members who performed the selected events in the window (B2B
  activity, kept on the account: ``cdp.segmentation.account_activity``);
- ``audience``: membership of another audience (by id);
- ``and`` / ``or`` (``conditions``) and ``not`` (``condition``), nested.

Operators (``op``): ``equals``, ``not_equals``, ``contains``, ``starts_with``, ``in``
(``values``), ``exists``, ``not_exists``, ``gt``, ``gte``, ``lt``, ``lte`` (numbers),
``before``, ``after`` (an ISO date or date-time), ``within_last_days`` (``days``; for
date-valued traits). Property filters use the same operators on ``properties.<path>``,
except ``within_last_days``: filters are applied when an event is counted, which has no
"now".

Every model refuses unknown fields. :func:`problems` turns a ``ValidationError`` into
``[{"field": "condition.and.conditions.1.event.count.n", "reason": ...}]``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import date, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_DEPTH = 10  # nesting levels of a condition (a leaf alone is depth 1)
MAX_NODES = 200  # nodes of a condition, leaves and and/or/not together
MAX_LIST_VALUES = 1_000  # values of an "in" operator
MAX_FILTERS = 20  # property filters of one event condition or aggregate
MAX_DAYS = 3_650  # longest window

Scalar = StrictStr | StrictBool | StrictInt | StrictFloat
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Days = Annotated[StrictInt, Field(ge=1, le=MAX_DAYS)]

Op = Literal[
    "equals", "not_equals", "contains", "starts_with", "in", "exists", "not_exists",
    "gt", "gte", "lt", "lte", "before", "after", "within_last_days",
]
NUMERIC_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
DATE_OPS = {"before", "after"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quote(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def parse_instant(text: str) -> datetime | date:
    """An ISO date (``2026-11-28``) or date-time; date-times without a zone are UTC."""
    if len(text) == 10:
        return date.fromisoformat(text)
    return datetime.fromisoformat(text)


class Predicate(_Strict):
    """An operator with its operand: ``op`` with ``value``, ``values`` or ``days``.

    Which operand an operator takes is checked here, so a wrong one is an error that
    names the operator (e.g. ``gt`` with a string value).
    """

    op: Op
    value: Scalar | None = None
    values: list[Scalar] | None = Field(default=None, min_length=1, max_length=MAX_LIST_VALUES)
    days: Days | None = None

    @model_validator(mode="after")
    def _operand_fits_operator(self) -> Predicate:
        op = self.op
        wants = "value"
        if op == "in":
            wants = "values"
        elif op == "within_last_days":
            wants = "days"
        elif op in ("exists", "not_exists"):
            wants = ""
        for operand in ("value", "values", "days"):
            given = getattr(self, operand) is not None
            if given and operand != wants:
                raise ValueError(f"op {op!r} takes no {operand!r}")
            if not given and operand == wants:
                raise ValueError(f"op {op!r} needs {operand!r}")
        if op in NUMERIC_OPS and (isinstance(self.value, bool) or not isinstance(self.value, int | float)):
            raise ValueError(f"op {op!r} needs a number as 'value'")
        if op == "starts_with" and not isinstance(self.value, str):
            raise ValueError("op 'starts_with' needs a string as 'value'")
        if op in DATE_OPS:
            if not isinstance(self.value, str):
                raise ValueError(f"op {op!r} needs an ISO date or date-time string as 'value'")
            try:
                parse_instant(self.value)
            except ValueError:
                raise ValueError(f"op {op!r}: {self.value!r} is not an ISO date or date-time") from None
        return self

    def describe(self) -> str:
        """The operator and operand in words: ``= "pro"``, ``within the last 7 days``."""
        op = self.op
        if op == "equals":
            return f"= {_quote(self.value)}"
        if op == "not_equals":
            return f"!= {_quote(self.value)}"
        if op == "contains":
            return f"contains {_quote(self.value)}"
        if op == "starts_with":
            return f"starts with {_quote(self.value)}"
        if op == "in":
            values = self.values or []
            shown = ", ".join(_quote(v) for v in values[:5])
            more = f" and {len(values) - 5} more" if len(values) > 5 else ""
            return f"is one of [{shown}]{more}"
        if op == "exists":
            return "exists"
        if op == "not_exists":
            return "does not exist"
        if op in NUMERIC_OPS:
            return f"{NUMERIC_OPS[op]} {_quote(self.value)}"
        if op in DATE_OPS:
            return f"{op} {self.value}"
        return f"within the last {self.days} day{'s' if self.days != 1 else ''}"


class PropertyFilter(Predicate):
    """A test of ``properties.<property>`` of an event (a dotted path; digits index lists)."""

    property: Annotated[str, Field(min_length=1, max_length=200)]

    @field_validator("op")
    @classmethod
    def _no_relative_time(cls, op: str) -> str:
        if op == "within_last_days":
            raise ValueError("property filters cannot use 'within_last_days' (use the condition's window)")
        return op

    def summary(self) -> str:
        return f"{self.property} {self.describe()}"


class DaysWindow(_Strict):
    """The bucket (UTC day) of ``now`` and the ``days - 1`` days before it."""

    days: Days

    def summary(self) -> str:
        return f"in the last {self.days} day{'s' if self.days != 1 else ''}"


class BetweenWindow(_Strict):
    """UTC days ``from`` to ``to``, both included."""

    model_config = ConfigDict(populate_by_name=True)

    start: date = Field(alias="from")
    end: date = Field(alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> BetweenWindow:
        if self.end < self.start:
            raise ValueError("'to' is before 'from'")
        return self

    def summary(self) -> str:
        return f"between {self.start.isoformat()} and {self.end.isoformat()}"


def _window_kind(data: Any) -> str:
    if isinstance(data, dict):
        return "days" if "days" in data else "between"
    return "days" if isinstance(data, DaysWindow) else "between"


# {"days": N} or {"from": date, "to": date}: errors name the one the input looks like.
Window = Annotated[
    Annotated[DaysWindow, Tag("days")] | Annotated[BetweenWindow, Tag("between")],
    Discriminator(_window_kind),
]

AggregateKind = Literal[
    "count", "sum", "average", "min", "max", "first", "last", "most_frequent", "unique", "unique_count",
]
KIND_WORDS = {
    "count": "number", "sum": "sum", "average": "average", "min": "minimum", "max": "maximum",
    "first": "first value", "last": "last value", "most_frequent": "most frequent value",
    "unique": "unique values", "unique_count": "number of unique values",
}


class EventSelector(_Strict):
    """Which events: a type, a name (``event`` of track, ``name`` of page/screen), filters.

    No name means every event of the type.
    """

    event_type: Literal["track", "page", "screen"] = "track"
    event: Name | None = None
    where: list[PropertyFilter] = Field(default_factory=list, max_length=MAX_FILTERS)

    def verb_and_events(self) -> tuple[str, str]:
        """("performed", '"Order Completed" where ...') or ("viewed", 'page "Pricing"'), for summaries."""
        name = _quote(self.event) if self.event else None
        if self.event_type == "track":
            verb, what = "performed", name or "any track event"
        else:
            verb, what = "viewed", f"{self.event_type} {name}" if name else f"any {self.event_type}"
        if self.where:
            what += " where " + " and ".join(f.summary() for f in self.where)
        return verb, what

    def describe_events(self) -> str:
        if self.event_type == "track":
            what = f"{_quote(self.event)} events" if self.event else "track events"
        else:
            what = f"{self.event_type} {_quote(self.event)} views" if self.event else f"{self.event_type} views"
        if self.where:
            what += " where " + " and ".join(f.summary() for f in self.where)
        return what


class AggregateSpec(EventSelector):
    """An aggregate of the selected events over a window (none: all time).

    ``property`` (a dotted path in ``properties``) is required by every kind but ``count``.
    """

    kind: AggregateKind
    property: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    window: Window | None = None

    @model_validator(mode="after")
    def _property_when_needed(self) -> AggregateSpec:
        if self.kind == "count" and self.property is not None:
            raise ValueError("kind 'count' takes no 'property'")
        if self.kind != "count" and self.property is None:
            raise ValueError(f"kind {self.kind!r} needs 'property'")
        return self

    def aggregate_id(self) -> str:
        """A stable id: a hash of the canonical JSON of the spec."""
        return self.stable_id

    @functools.cached_property
    def stable_id(self) -> str:
        # Computed once per spec object (the model is frozen): the evaluator asks for it
        # thousands of times per batch.
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return "agg_" + hashlib.sha256(canonical.encode()).hexdigest()[:20]

    def summary(self) -> str:
        subject = KIND_WORDS[self.kind]
        of = f" of {self.property}" if self.property else ""
        window = self.window.summary() if self.window else "over all time"
        return f"{subject}{of} of {self.describe_events()} {window}"


class TraitCondition(Predicate):
    type: Literal["trait"]
    trait: Name

    def summary(self) -> str:
        return f"trait {self.trait} {self.describe()}"


class AccountCondition(Predicate):
    """True when any of the profile's accounts has a trait that passes the test."""

    type: Literal["account"]
    trait: Name

    def summary(self) -> str:
        return f"an account's trait {self.trait} {self.describe()}"


class ComputedTraitCondition(Predicate):
    type: Literal["computed_trait"]
    trait: Slug

    def summary(self) -> str:
        return f"computed trait {self.trait} {self.describe()}"


class Count(_Strict):
    op: Literal["at_least", "at_most", "exactly"] = "at_least"
    n: Annotated[StrictInt, Field(ge=0, le=1_000_000_000)] = 1


class EventCondition(EventSelector):
    """Performed (or viewed) selected events at least / at most / exactly ``n`` times."""

    type: Literal["event"]
    count: Count = Field(default_factory=Count)
    window: Window | None = None

    def aggregate(self) -> AggregateSpec:
        """The implicit counter this condition reads (its ``id`` keys the facts)."""
        return self.implicit_counter

    @functools.cached_property
    def implicit_counter(self) -> AggregateSpec:
        # One spec object per condition (frozen), so its id is hashed once.
        return AggregateSpec(
            kind="count", event_type=self.event_type, event=self.event, where=self.where, window=self.window,
        )

    def summary(self) -> str:
        verb, what = self.verb_and_events()
        n, op = self.count.n, self.count.op
        if op == "exactly" and n == 0:
            text = f"has not {verb} {what}"
        elif op == "at_least" and n == 1:
            text = f"{verb} {what}"
        else:
            words = {"at_least": "at least", "at_most": "at most", "exactly": "exactly"}[op]
            times = "once" if n == 1 else f"{n} times"
            text = f"{verb} {what} {words} {times}"
        return f"{text} {self.window.summary()}" if self.window else text


class AccountActivitySpec(EventSelector):
    """Which members of an account were active: the selected events, kept per UTC day (or
    over all time, or between two dates) as the set of the members' profile ids on the
    account (``cdp.segmentation.account_activity``)."""

    window: Window | None = None

    def activity_id(self) -> str:
        """A stable id: a hash of the canonical JSON of the spec (``act_`` + 20 hex digits)."""
        return self.stable_id

    @functools.cached_property
    def stable_id(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return "act_" + hashlib.sha256(canonical.encode()).hexdigest()[:20]


class AccountActivityCondition(EventSelector):
    """Some account of the profile has ``members`` (at least / at most / exactly ``n``)
    distinct members who performed the selected events in the window (absent: all time)."""

    type: Literal["account_activity"]
    window: Window | None = None
    members: Count = Field(default_factory=Count)

    def activity(self) -> AccountActivitySpec:
        """The per-account activity this condition reads (its ``activity_id()`` keys it)."""
        return self.activity_spec

    @functools.cached_property
    def activity_spec(self) -> AccountActivitySpec:
        return AccountActivitySpec(event_type=self.event_type, event=self.event, where=self.where,
                                   window=self.window)

    def summary(self) -> str:
        verb, what = self.verb_and_events()
        n, op = self.members.n, self.members.op
        if op == "exactly" and n == 0:
            count = "no members"
        else:
            words = {"at_least": "at least", "at_most": "at most", "exactly": "exactly"}[op]
            count = f"{words} {n} member{'' if n == 1 else 's'}"
        window = f" {self.window.summary()}" if self.window else ""
        return f"an account has {count} who {verb} {what}{window}"


class AudienceCondition(_Strict):
    type: Literal["audience"]
    audience: Slug
    member: StrictBool = True

    def summary(self) -> str:
        return f"{'' if self.member else 'not '}in audience {_quote(self.audience)}"


class AndCondition(_Strict):
    type: Literal["and"]
    conditions: list[Condition] = Field(min_length=1)

    def summary(self) -> str:
        return " AND ".join(_grouped(c) for c in self.conditions)


class OrCondition(_Strict):
    type: Literal["or"]
    conditions: list[Condition] = Field(min_length=1)

    def summary(self) -> str:
        return " OR ".join(_grouped(c) for c in self.conditions)


class NotCondition(_Strict):
    type: Literal["not"]
    condition: Condition

    def summary(self) -> str:
        return f"NOT ({self.condition.summary()})"


Condition = Annotated[
    Union[  # noqa: UP007 (a forward-referencing union needs Union)
        TraitCondition, AccountCondition, ComputedTraitCondition, EventCondition, AccountActivityCondition,
        AudienceCondition, AndCondition, OrCondition, NotCondition,
    ],
    Field(discriminator="type"),
]
AndCondition.model_rebuild()
OrCondition.model_rebuild()
NotCondition.model_rebuild()

AnyCondition = (
    TraitCondition | AccountCondition | ComputedTraitCondition | EventCondition | AccountActivityCondition
    | AudienceCondition | AndCondition | OrCondition | NotCondition
)


def _grouped(condition: AnyCondition) -> str:
    text = condition.summary()
    return f"({text})" if isinstance(condition, AndCondition | OrCondition) and len(condition.conditions) > 1 else text


def children(condition: AnyCondition) -> list[AnyCondition]:
    if isinstance(condition, AndCondition | OrCondition):
        return list(condition.conditions)
    if isinstance(condition, NotCondition):
        return [condition.condition]
    return []


def check_limits(condition: AnyCondition) -> None:
    """Raise ``ValueError`` when a condition nests deeper than MAX_DEPTH or has more than MAX_NODES nodes."""
    nodes = 0
    stack: list[tuple[AnyCondition, int, str]] = [(condition, 1, "condition")]
    while stack:
        node, depth, path = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep (at {path})")
        if nodes > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} conditions")
        key = "conditions" if isinstance(node, AndCondition | OrCondition) else "condition"
        for i, child in enumerate(children(node)):
            child_path = f"{path}.{node.type}.{key}" + (f".{i}" if key == "conditions" else "")
            stack.append((child, depth + 1, child_path))


class AudienceDefinition(_Strict):
    """An audience: the profiles that meet ``condition``.

    ``schedule_hours``: how often window-based membership is re-checked (default: hourly).
    """

    id: Slug
    name: Name
    description: Annotated[str, Field(max_length=2_000)] = ""
    condition: Condition
    schedule_hours: Annotated[StrictInt, Field(ge=1, le=24 * 7)] | None = None

    @field_validator("condition")
    @classmethod
    def _within_limits(cls, condition: AnyCondition) -> AnyCondition:
        check_limits(condition)
        return condition

    @model_validator(mode="after")
    def _not_itself(self) -> AudienceDefinition:
        stack: list[AnyCondition] = [self.condition]
        while stack:
            node = stack.pop()
            if isinstance(node, AudienceCondition) and node.audience == self.id:
                raise ValueError("an audience cannot refer to itself")
            stack.extend(children(node))
        return self

    def summary(self) -> str:
        return self.condition.summary()


class ComputedTraitDefinition(_Strict):
    """A computed trait: ``id`` is the trait's name on the profile; ``aggregate`` its value.

    The window of a computed trait is all time or a sliding number of days.
    """

    id: Slug
    name: Name
    description: Annotated[str, Field(max_length=2_000)] = ""
    aggregate: AggregateSpec

    @field_validator("aggregate")
    @classmethod
    def _sliding_or_all_time(cls, aggregate: AggregateSpec) -> AggregateSpec:
        if isinstance(aggregate.window, BetweenWindow):
            raise ValueError("a computed trait's window is all time or {'days': N}, not between two dates")
        return aggregate

    def summary(self) -> str:
        return self.aggregate.summary()


def problems(exc: ValidationError) -> list[dict[str, str]]:
    """Each error of a validation as ``{"field": "condition.and.conditions.1...", "reason": ...}``."""
    found = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(definition)"
        reason = error["msg"].removeprefix("Value error, ")
        found.append({"field": field, "reason": reason})
    return found
