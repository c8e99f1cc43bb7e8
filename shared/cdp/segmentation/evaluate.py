"""Evaluating a condition against what is known of one profile, and what a definition reads.

``evaluate`` never raises on data: a missing trait, a trait of the wrong type (a string
compared with ``gt``, a number with ``starts_with``, text that is not a date with
``before``) makes that test False (see :mod:`cdp.segmentation.predicates`); ``not``
then inverts it as usual, so ``NOT (trait plan = "pro")`` holds for a profile without a
plan. An event condition whose aggregate state is absent from the facts reads an empty
history (0 events), so "has not performed" holds for a profile never seen doing it.
An account-activity condition reads each account's activity (``AccountFacts``); an
account without it has 0 active members, and a profile without accounts never matches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cdp.segmentation import account_activity, aggregates
from cdp.segmentation.definitions import (
    AccountActivityCondition,
    AccountActivitySpec,
    AccountCondition,
    AggregateSpec,
    AndCondition,
    AnyCondition,
    AudienceCondition,
    AudienceDefinition,
    ComputedTraitCondition,
    ComputedTraitDefinition,
    DaysWindow,
    EventCondition,
    NotCondition,
    OrCondition,
    TraitCondition,
    children,
)
from cdp.segmentation.predicates import MISSING, passes


@dataclass(frozen=True)
class AccountFacts(Mapping[str, Any]):
    """One account as the evaluator reads it: a mapping of its traits (what account
    conditions test), with its activity (``cdp.segmentation.account_activity``:
    spec id -> bucket -> member tags) for account-activity conditions."""

    group_id: str
    traits: Mapping[str, Any] = field(default_factory=dict)
    activity: account_activity.Activity = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.traits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.traits)

    def __len__(self) -> int:
        return len(self.traits)


def activity_of(account: Mapping[str, Any]) -> account_activity.Activity:
    """An account's activity (a plain mapping of traits has none)."""
    return account.activity if isinstance(account, AccountFacts) else {}


@dataclass(frozen=True)
class Facts:
    """What the evaluator knows of one profile.

    ``aggregates`` holds the states of event conditions by ``aggregate_id()``;
    ``computed`` the current values of computed traits by id; ``accounts`` the traits
    of each account the profile belongs to (``AccountFacts`` also carry their activity);
    ``audiences`` the ids of audiences it is in.
    """

    traits: Mapping[str, Any] = field(default_factory=dict)
    computed: Mapping[str, Any] = field(default_factory=dict)
    aggregates: Mapping[str, aggregates.AggregateState] = field(default_factory=dict)
    accounts: Sequence[Mapping[str, Any]] = ()
    audiences: Set[str] = frozenset()


def _count_passes(condition: EventCondition | AccountActivityCondition, count: int) -> bool:
    expected = condition.members if isinstance(condition, AccountActivityCondition) else condition.count
    n = expected.n
    if expected.op == "at_least":
        return count >= n
    if expected.op == "at_most":
        return count <= n
    return count == n


def account_member_counts(condition: AccountActivityCondition, facts: Facts, now: datetime) -> list[int]:
    """Per account of the profile, its distinct members active as the condition selects, at ``now``."""
    spec = condition.activity()
    return [account_activity.member_count(spec, activity_of(account), now) for account in facts.accounts]


def event_count(condition: EventCondition, facts: Facts, now: datetime) -> int:
    """How many selected events the profile has in the condition's window at ``now``."""
    spec = condition.aggregate()
    state = facts.aggregates.get(spec.aggregate_id())
    return 0 if state is None else int(aggregates.value(state, now))


def evaluate(condition: AnyCondition, facts: Facts, now: datetime) -> bool:
    """Whether the profile described by ``facts`` meets ``condition`` at ``now``."""
    if isinstance(condition, AndCondition):
        return all(evaluate(c, facts, now) for c in condition.conditions)
    if isinstance(condition, OrCondition):
        return any(evaluate(c, facts, now) for c in condition.conditions)
    if isinstance(condition, NotCondition):
        return not evaluate(condition.condition, facts, now)
    if isinstance(condition, TraitCondition):
        return passes(condition, facts.traits.get(condition.trait, MISSING), now)
    if isinstance(condition, ComputedTraitCondition):
        return passes(condition, facts.computed.get(condition.trait, MISSING), now)
    if isinstance(condition, AccountCondition):
        return any(passes(condition, account.get(condition.trait, MISSING), now) for account in facts.accounts)
    if isinstance(condition, AudienceCondition):
        return (condition.audience in facts.audiences) == condition.member
    if isinstance(condition, AccountActivityCondition):
        return any(_count_passes(condition, n) for n in account_member_counts(condition, facts, now))
    return _count_passes(condition, event_count(condition, facts, now))


@dataclass
class Dependencies:
    """What a definition reads, for an index from inputs to the audiences to re-evaluate.

    ``events`` holds ``(event_type, name)`` pairs (name None: any event of the type);
    ``aggregates`` the aggregate specs (by id) the profile must keep for it: the implicit
    counters of event conditions, or a computed trait's own spec. ``activity``: the
    account activity specs (by id) of account-activity conditions. ``time_based``: the
    result can change with time alone (a sliding window, ``within_last_days``), so the
    schedule must look at it again.
    """

    traits: set[str] = field(default_factory=set)
    account_traits: set[str] = field(default_factory=set)
    events: set[tuple[str, str | None]] = field(default_factory=set)
    computed_traits: set[str] = field(default_factory=set)
    audiences: set[str] = field(default_factory=set)
    aggregates: dict[str, AggregateSpec] = field(default_factory=dict)
    activity: dict[str, AccountActivitySpec] = field(default_factory=dict)
    time_based: bool = False


def _add_spec(found: Dependencies, spec: AggregateSpec) -> None:
    found.events.add((spec.event_type, spec.event))
    found.aggregates[spec.aggregate_id()] = spec
    if isinstance(spec.window, DaysWindow):
        found.time_based = True


def dependencies(definition: AudienceDefinition | ComputedTraitDefinition | AnyCondition) -> Dependencies:
    """Every input ``definition`` reads (an audience, a computed trait, or a bare condition)."""
    found = Dependencies()
    if isinstance(definition, ComputedTraitDefinition):
        _add_spec(found, definition.aggregate)
        return found
    stack: list[AnyCondition] = [definition.condition if isinstance(definition, AudienceDefinition) else definition]
    while stack:
        node = stack.pop()
        stack.extend(children(node))
        if isinstance(node, TraitCondition | AccountCondition | ComputedTraitCondition) and (
            node.op == "within_last_days"
        ):
            found.time_based = True
        if isinstance(node, TraitCondition):
            found.traits.add(node.trait)
        elif isinstance(node, AccountCondition):
            found.account_traits.add(node.trait)
        elif isinstance(node, ComputedTraitCondition):
            found.computed_traits.add(node.trait)
        elif isinstance(node, AudienceCondition):
            found.audiences.add(node.audience)
        elif isinstance(node, EventCondition):
            _add_spec(found, node.aggregate())
        elif isinstance(node, AccountActivityCondition):
            spec = node.activity()
            found.events.add((spec.event_type, spec.event))
            found.activity[spec.activity_id()] = spec
            if isinstance(spec.window, DaysWindow):
                found.time_based = True
    return found
