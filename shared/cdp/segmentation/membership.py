"""Which audiences a profile change can affect, and the membership decisions it leads to.

Plain Python: the stream evaluator (``cdp.segmentation.evaluator``) feeds it the old and
new image of an identity-table profile item, the profile's stored memberships and the
catalog; it returns one :class:`Decision` per audience whose stored membership must
change (enter, exit, or only a new ``next_check``).

**Dependency index.** From the catalog: trait name, aggregate spec id, computed trait id
and audience id -> the audiences that read them, closed transitively through
``audience`` conditions, and evaluated in dependency order (an audience after the
audiences it names), so one profile change settles nested audiences in one pass.

**Versions.** Every decision carries the profile item's ``version`` (a merged-away home
item has none: its old version + 1). The store keeps the version of the last decision
(``profile_version``) and of the last entry or exit (``changed_version``); an image
older than the stored decision is ignored, and an image whose transition is already
stored (a redelivery) only replays the event (same messageId), so duplicates and
out-of-order records converge.

**Time.** Sliding windows and ``within_last_days`` change with time alone. Each
decision of such an audience carries ``next_check``: the first instant (a UTC midnight,
or a date trait's own instant) at which the audience's result would differ if nothing
else happened. The hourly schedule touches the profiles whose ``next_check`` hour has
ended (``cdp.aws.scheduled_reevaluation``) and ``decide`` re-evaluates the due
audiences, so a profile change costs the audiences its inputs touch, not every
time-based one.

**Accounts.** An account item whose traits changed, or whose activity changed so that
the member count some account-activity audience reads differs
(:func:`account_change`), has its members touched; account-based audiences (account
traits or activity) are evaluated for them. A member's ``next_check`` includes the
midnights at which its accounts' activity buckets enter or leave a window.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from cdp.identity.profile_state import state_from_json
from cdp.segmentation.account_activity import activity_from_json, buckets_of, member_count
from cdp.segmentation.catalog import Catalog
from cdp.segmentation.definitions import (
    AccountActivityCondition,
    AccountActivitySpec,
    AccountCondition,
    AnyCondition,
    AudienceDefinition,
    ComputedTraitCondition,
    DaysWindow,
    TraitCondition,
    children,
    parse_instant,
)
from cdp.segmentation.evaluate import Facts, activity_of, dependencies, evaluate
from cdp.segmentation.tallies import computed_values, facts_from_item, profile_of_item, tallies_from_json

Transition = Literal["entered", "exited"]
# At most this many candidate instants are tried when looking for ``next_check``.
MAX_CHECK_CANDIDATES = 64


# --- the dependency index -----------------------------------------------------------------


@dataclass(frozen=True)
class DependencyIndex:
    """From inputs to the audiences that read them (directly or through other audiences)."""

    order: tuple[str, ...] = ()  # every audience, each after the audiences it names
    by_trait: Mapping[str, frozenset[str]] = field(default_factory=dict)
    by_aggregate: Mapping[str, frozenset[str]] = field(default_factory=dict)
    by_computed_trait: Mapping[str, frozenset[str]] = field(default_factory=dict)
    dependents: Mapping[str, frozenset[str]] = field(default_factory=dict)  # audience -> audiences naming it
    time_based: frozenset[str] = frozenset()  # may change with time alone (also through a nested audience)
    account_based: frozenset[str] = frozenset()  # read account traits or activity (directly)
    # The account activity specs audiences read (by id): a change of an account's member
    # count for one of them re-evaluates the account's members.
    activity: Mapping[str, AccountActivitySpec] = field(default_factory=dict)
    names: Mapping[str, frozenset[str]] = field(default_factory=dict)  # audience -> audiences it names

    @staticmethod
    def of(catalog: Catalog) -> DependencyIndex:
        """The index of the catalog's audiences."""
        by_trait: dict[str, set[str]] = {}
        by_aggregate: dict[str, set[str]] = {}
        by_computed: dict[str, set[str]] = {}
        named: dict[str, set[str]] = {}
        dependents: dict[str, set[str]] = {}
        time_based: set[str] = set()
        account_based: set[str] = set()
        activity: dict[str, AccountActivitySpec] = {}
        # A computed trait's value changes with its own aggregate state.
        spec_of_trait = {tid: d.aggregate.aggregate_id() for tid, d in catalog.computed_traits.items()}
        timed_traits = {tid for tid, d in catalog.computed_traits.items()
                        if isinstance(d.aggregate.window, DaysWindow)}
        for audience_id, definition in catalog.audiences.items():
            found = dependencies(definition)
            for trait in found.traits:
                by_trait.setdefault(trait, set()).add(audience_id)
            for spec_id in found.aggregates:
                by_aggregate.setdefault(spec_id, set()).add(audience_id)
            for trait_id in found.computed_traits:
                by_computed.setdefault(trait_id, set()).add(audience_id)
                if trait_id in spec_of_trait:
                    by_aggregate.setdefault(spec_of_trait[trait_id], set()).add(audience_id)
            named[audience_id] = set(found.audiences)
            for other in found.audiences:
                dependents.setdefault(other, set()).add(audience_id)
            if found.time_based or found.computed_traits & timed_traits:
                time_based.add(audience_id)
            if found.account_traits or found.activity:
                account_based.add(audience_id)
            activity.update(found.activity)
        order = _dependency_order(sorted(catalog.audiences), named)
        # An audience naming a time-based audience changes with time too.
        for audience_id in order:
            if named[audience_id] & time_based:
                time_based.add(audience_id)
        return DependencyIndex(
            order=tuple(order),
            by_trait={k: frozenset(v) for k, v in by_trait.items()},
            by_aggregate={k: frozenset(v) for k, v in by_aggregate.items()},
            by_computed_trait={k: frozenset(v) for k, v in by_computed.items()},
            dependents={k: frozenset(v) for k, v in dependents.items()},
            time_based=frozenset(time_based),
            account_based=frozenset(account_based),
            activity=activity,
            names={k: frozenset(v) for k, v in named.items()},
        )

    def affected(self, *, traits: Iterable[str] = (), aggregates: Iterable[str] = (),
                 computed_traits: Iterable[str] = (), audiences: Iterable[str] = ()) -> list[str]:
        """The audiences to re-evaluate when these inputs changed, in evaluation order.

        ``audiences``: audiences whose membership changed (their dependents are affected,
        not they themselves).
        """
        direct: set[str] = set()
        for trait in traits:
            direct |= self.by_trait.get(trait, frozenset())
        for spec_id in aggregates:
            direct |= self.by_aggregate.get(spec_id, frozenset())
        for trait_id in computed_traits:
            direct |= self.by_computed_trait.get(trait_id, frozenset())
        for audience_id in audiences:
            direct |= self.dependents.get(audience_id, frozenset())
        return self.closure(direct)

    def closure(self, audiences: Iterable[str]) -> list[str]:
        """The audiences and every audience naming them (transitively), in evaluation order."""
        found = set(audiences)
        stack = list(found)
        while stack:
            for dependent in self.dependents.get(stack.pop(), frozenset()):
                if dependent not in found:
                    found.add(dependent)
                    stack.append(dependent)
        return [audience_id for audience_id in self.order if audience_id in found]


def _dependency_order(audiences: Sequence[str], named: Mapping[str, set[str]]) -> list[str]:
    """Each audience after the audiences it names (depth first, ids in order).

    A cycle (A names B, B names A: each definition is valid alone) is cut where it is
    found; its audiences are still evaluated, reading each other's stored membership.
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(audience_id: str) -> None:
        # Iterative, so deep chains cannot hit the recursion limit.
        stack: list[tuple[str, list[str]]] = [(audience_id, sorted(named.get(audience_id, ())))]
        state[audience_id] = 1
        while stack:
            current, pending = stack[-1]
            while pending and (pending[0] not in named or state.get(pending[0])):
                pending.pop(0)
            if pending:
                child = pending.pop(0)
                state[child] = 1
                stack.append((child, sorted(named.get(child, ()))))
                continue
            stack.pop()
            state[current] = 2
            order.append(current)

    for audience_id in audiences:
        if not state.get(audience_id):
            visit(audience_id)
    return order


# --- profile changes -----------------------------------------------------------------


@dataclass(frozen=True)
class ProfileChange:
    """One stream record of a profile item, read: which profile, live or gone, at which version."""

    profile_id: str
    version: int
    live: bool  # False: merged away (or deleted): it leaves every audience
    new_profile: bool  # no earlier image of this live profile: every audience is evaluated
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None

    @property
    def ids(self) -> list[str]:
        """The identifier keys (``ident#<type>:<value>``) of the profile, as the newest image has them."""
        for image in (self.new, self.old):
            if image and "ids" in image:
                return sorted(image["ids"].get("SS", []))
        image = self.new or self.old or {}
        key = image.get("pk", {}).get("S", "")
        return [key] if key.startswith("ident#") else []


def _version(image: Mapping[str, Any] | None) -> int | None:
    value = (image or {}).get("version", {})
    return int(value["N"]) if isinstance(value, dict) and "N" in value else None


def profile_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> ProfileChange | None:
    """The profile change a stream record's images stand for; None if they are no profile's."""
    now_is = profile_of_item(new) if new else None
    was = profile_of_item(old) if old else None
    new_version = _version(new)
    old_version = _version(old)
    if new_version is not None:
        version = new_version
    elif old_version is not None:
        version = old_version + 1  # a home item merged away keeps no version: the merge is the next one
    else:
        version = 0
    if now_is is not None:
        profile_id, live = now_is
        fresh = live and (was is None or was != (profile_id, True))
        return ProfileChange(profile_id, version, live, fresh, old, new)
    if was is not None:  # a home item that lost ``solo`` (merged away), or a removed item
        return ProfileChange(was[0], version, False, False, old, new)
    return None


def account_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                   activity: Mapping[str, AccountActivitySpec] | None = None,
                   now: datetime | None = None) -> str | None:
    """The group id of an account item whose traits differ between the images, or whose
    member count for one of the ``activity`` specs (those audiences read) differs at
    ``now`` (else None)."""
    image = new or old or {}
    if not image.get("pk", {}).get("S", "").startswith("acct#") or "group_id" not in image:
        return None
    if _canonical(_traits(old)) != _canonical(_traits(new)) or (
            activity and activity_counts_changed(old, new, activity, now or datetime.now(UTC))):
        return str(image["group_id"]["S"])
    return None


def _activity(image: Mapping[str, Any] | None) -> dict[str, dict[str, list[str]]]:
    return buckets_of(activity_from_json((image or {}).get("act", {}).get("S")))


def activity_counts_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                            specs: Mapping[str, AccountActivitySpec], now: datetime) -> bool:
    """Whether an account's member count for some spec differs between the images at ``now``,
    or at the midnight of a day after ``now``'s that has a bucket (an event dated ahead).

    Enough for members' memberships: with no bucket after today, a change of the count at
    ``now`` is the only way the union can change a result now, and one that leaves it the
    same can only postpone a later flip (buckets are sets that only grow), so a stored
    ``next_check`` is early at worst and the schedule corrects it. Members are not touched
    for an active member's second event of a day, nor for a repeated day."""
    before, after = _activity(old), _activity(new)
    today = now.astimezone(UTC).date().isoformat() if now.tzinfo else now.date().isoformat()
    for spec_id, spec in specs.items():
        if before.get(spec_id) == after.get(spec_id):
            continue
        ahead = {day for buckets in (before.get(spec_id) or {}, after.get(spec_id) or {})
                 for day in buckets if day != "*" and day > today}
        for moment in [now, *(_midnight(date.fromisoformat(day)) for day in sorted(ahead) if _is_day(day))]:
            if member_count(spec, before, moment) != member_count(spec, after, moment):
                return True
    return False


def _is_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _traits(image: Mapping[str, Any] | None) -> dict[str, Any]:
    text = (image or {}).get("state", {}).get("S")
    return {name: t.value for name, t in state_from_json(text).traits.items()}


def _states(image: Mapping[str, Any] | None) -> dict[str, Any]:
    return tallies_from_json((image or {}).get("agg", {}).get("S")).states


def changed_inputs(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[set[str], set[str]]:
    """The trait names and aggregate spec ids whose values differ between the two images."""
    old_traits, new_traits = _traits(old), _traits(new)
    traits = {name for name in old_traits.keys() | new_traits.keys()
              if not _same(old_traits.get(name, _ABSENT), new_traits.get(name, _ABSENT))}
    old_states, new_states = _states(old), _states(new)
    specs = {spec_id for spec_id in old_states.keys() | new_states.keys()
             if not _same(old_states.get(spec_id), new_states.get(spec_id))}
    return traits, specs


_ABSENT = object()
_SCALARS = (str, int, float, bool, type(None))


def _same(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same value as the evaluator reads them: 1, 1.0 and
    true differ (``==`` says they are equal), key order does not matter."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, _SCALARS):
        return bool(a == b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(value, b[key]) for key, value in a.items())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return _canonical(a) == _canonical(b)


def _canonical(value: Any) -> str:
    if value is _ABSENT:
        return "\x00absent"
    # 1 and true differ (JSON), as the evaluator treats them.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Membership:
    """A stored membership (one item of the memberships table)."""

    audience_id: str
    member: bool
    profile_version: int = 0  # the profile version of the last decision written
    changed_version: int = 0  # the profile version of the last entry or exit
    entered_at: str | None = None
    exited_at: str | None = None
    next_check: str | None = None  # UTC hour bucket, e.g. "2026-11-29T00"


@dataclass(frozen=True)
class Decision:
    """What to store for one audience (and which event to emit).

    ``replay``: the transition was stored by an earlier delivery of the same image;
    nothing is written, the event is emitted again (its messageId dedupes it).
    """

    audience_id: str
    member: bool
    transition: Transition | None
    profile_version: int
    at: str  # ISO 8601 UTC: when the transition happened (the event's timestamp)
    next_check: str | None = None
    replay: bool = False


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def on_schedule(moment: datetime, hours: int) -> datetime:
    """The first tick of an audience's schedule (every ``hours`` hours from the Unix epoch,
    UTC: every 6 hours is 00, 06, 12, 18) at or after ``moment``."""
    step = hours * 3600
    seconds = int(moment.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(-(-seconds // step) * step, UTC)


def hour_bucket(moment: datetime) -> str:
    """The UTC hour an instant falls in: ``2026-11-29T00``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def accounts_of(image: Mapping[str, Any] | None) -> frozenset[str]:
    """The group ids of the accounts a profile item's state says it belongs to."""
    return state_from_json((image or {}).get("state", {}).get("S")).accounts


def touch_check(image: Mapping[str, Any] | None) -> dict[str, Any]:
    """Why a profile item was last touched (``check``, see ``cdp.aws.profile_items``)."""
    text = (image or {}).get("check", {}).get("S")
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


# A touch (``cdp.aws.profile_items``) whose check carries this key asks for every audience
# to be decided again: the redrive of the evaluator's dead letters (cdp.aws.evaluator_redrive).
FULL_CHECK = "redrive"


def memberships_needed(change: ProfileChange, catalog: Catalog, index: DependencyIndex) -> set[str] | None:
    """Which stored memberships ``decide`` needs for this change: None for all of them (a new,
    merged-away or schedule-touched profile: due checks, every audience), else the
    audiences the change's inputs affect and those they name (an empty set: nothing to
    evaluate, nothing to read)."""
    if not change.live or change.new_profile:
        return None
    check = touch_check(change.new) if touch_check(change.old) != touch_check(change.new) else {}
    if "schedule" in check or check.get(FULL_CHECK):
        return None
    traits, specs = changed_inputs(change.old, change.new)
    joined = accounts_of(change.old) != accounts_of(change.new) or "accounts" in check
    named = {str(a) for a in check.get("audiences") or () if a in catalog.audiences}
    affected = index.closure({*index.affected(traits=traits, aggregates=specs), *named,
                              *(index.account_based if joined else ())})
    return {*affected, *(n for a in affected for n in index.names.get(a, ()))}


def decide(change: ProfileChange, catalog: Catalog, index: DependencyIndex, now: datetime,
           memberships: Mapping[str, Membership],
           accounts: Callable[[], Sequence[Mapping[str, Any]]] = lambda: (),
           only: Iterable[str] | None = None) -> list[Decision]:
    """The membership decisions of one profile change.

    ``memberships``: the profile's stored memberships by audience id. ``accounts``: the
    traits of the profile's accounts, called only if an affected audience reads them.
    ``only``: evaluate these audiences (and those naming them) whatever changed.

    Which audiences a change affects: those reading a changed trait or aggregate state;
    those whose stored ``next_check`` hour has come (a sliding window may have moved:
    the hourly schedule touches such profiles, and any other change looks at them too);
    the account-based ones when the profile joined an account or was touched because an
    account's traits changed (``check``); the audiences a touch names; and, transitively,
    the audiences naming any of them. A new profile, and one touched by a redrive
    (``FULL_CHECK``), is evaluated against every audience.
    """
    at = iso(now)
    if not change.live:
        return _leave_all(change, memberships, at)
    decisions: list[Decision] = []
    current = {aid for aid, m in memberships.items() if m.member}
    if only is not None:
        affected = index.closure(only)
    elif change.new_profile or (touch_check(change.new).get(FULL_CHECK)
                                and touch_check(change.old) != touch_check(change.new)):
        affected = list(index.order)  # new, or touched by a redrive: every audience
    else:
        traits, specs = changed_inputs(change.old, change.new)
        hour = hour_bucket(now)
        due = {aid for aid, m in memberships.items() if m.next_check is not None and m.next_check <= hour}
        check = touch_check(change.new) if touch_check(change.old) != touch_check(change.new) else {}
        joined = accounts_of(change.old) != accounts_of(change.new) or "accounts" in check
        named = {str(a) for a in check.get("audiences") or () if a in catalog.audiences}
        affected = index.closure({*index.affected(traits=traits, aggregates=specs), *named,
                                  *(due & set(index.order)), *(index.account_based if joined else ())})
    if not affected or change.new is None:
        return decisions
    needs_accounts = any(aid in index.account_based for aid in affected)
    account_traits = list(accounts()) if needs_accounts else []
    base = facts_from_item(change.new, catalog, now, account_traits)
    for audience_id in affected:
        definition = catalog.audiences[audience_id]
        stored = memberships.get(audience_id)
        if stored is not None and stored.profile_version > change.version:
            continue  # a newer image was decided already: this one is stale
        if stored is not None and stored.profile_version == change.version \
                and stored.changed_version == change.version:
            # This very image was decided before (a redelivery): emit its event again.
            decisions.append(Decision(audience_id, stored.member, "entered" if stored.member else "exited",
                                      change.version, (stored.entered_at if stored.member else stored.exited_at) or at,
                                      stored.next_check, replay=True))
            continue
        facts = Facts(base.traits, base.computed, base.aggregates, base.accounts, frozenset(current))
        result = evaluate(definition.condition, facts, now)
        was_member = stored is not None and stored.member
        next_check = None
        if audience_id in index.time_based:
            moment = next_change_of(definition, facts, catalog, now, result)
            if moment is not None and definition.schedule_hours:
                moment = on_schedule(moment, definition.schedule_hours)
            next_check = hour_bucket(moment) if moment else None
        if result:
            current.add(audience_id)
        else:
            current.discard(audience_id)
        transition: Transition | None = None
        if result != was_member:
            transition = "entered" if result else "exited"
        stored_check = stored.next_check if stored else None
        if transition is None and next_check == stored_check:
            continue  # nothing to store
        decisions.append(Decision(audience_id, result, transition, change.version, at, next_check))
    return decisions


def _leave_all(change: ProfileChange, memberships: Mapping[str, Membership], at: str) -> list[Decision]:
    """A merged-away profile: exits every audience it is in, and needs no more checks."""
    decisions = []
    for audience_id, stored in sorted(memberships.items()):
        if stored.profile_version > change.version:
            continue
        if stored.profile_version == change.version and stored.changed_version == change.version \
                and not stored.member:
            decisions.append(Decision(audience_id, False, "exited", change.version, stored.exited_at or at,
                                      replay=True))
        elif stored.member:
            decisions.append(Decision(audience_id, False, "exited", change.version, at))
        elif stored.next_check is not None:
            decisions.append(Decision(audience_id, False, None, change.version, at))
    return decisions


# --- when a membership may change by itself ---------------------------------------------


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _timed_nodes(condition: AnyCondition) -> list[AnyCondition]:
    nodes, stack = [], [condition]
    while stack:
        node = stack.pop()
        stack.extend(children(node))
        nodes.append(node)
    return nodes


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_instant(value)
    except ValueError:
        return None
    if isinstance(parsed, datetime):
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return _midnight(parsed)


def change_candidates(definition: AudienceDefinition, facts: Facts, catalog: Catalog, now: datetime) -> list[datetime]:
    """Instants after ``now`` at which the definition's result may change with no new data.

    A day bucket of a sliding window (a profile's aggregate, or an account's activity)
    enters the window at its day's midnight and leaves it ``days`` midnights later; a
    ``within_last_days`` date holds from its instant until the midnight ``days`` days
    after its day.
    """
    found: set[datetime] = set()
    specs = dict(dependencies(definition).aggregates)
    for node in _timed_nodes(definition.condition):
        if isinstance(node, ComputedTraitCondition) and node.trait in catalog.computed_traits:
            spec = catalog.computed_traits[node.trait].aggregate
            specs[spec.aggregate_id()] = spec
    for spec_id, spec in specs.items():
        if not isinstance(spec.window, DaysWindow):
            continue
        state = facts.aggregates.get(spec_id)
        for day_text in state.buckets if state else ():
            try:
                day = date.fromisoformat(day_text)
            except ValueError:
                continue
            found.add(_midnight(day))
            found.add(_midnight(day + timedelta(days=spec.window.days)))
    for node in _timed_nodes(definition.condition):
        if not isinstance(node, AccountActivityCondition) or not isinstance(node.window, DaysWindow):
            continue
        spec_id = node.activity().activity_id()
        for account in facts.accounts:
            for day_text in activity_of(account).get(spec_id) or ():
                if not _is_day(day_text):
                    continue
                day = date.fromisoformat(day_text)
                found.add(_midnight(day))
                found.add(_midnight(day + timedelta(days=node.window.days)))
    for node in _timed_nodes(definition.condition):
        if not isinstance(node, TraitCondition | ComputedTraitCondition | AccountCondition) \
                or node.op != "within_last_days" or node.days is None:
            continue
        if isinstance(node, TraitCondition):
            values = [facts.traits.get(node.trait)]
        elif isinstance(node, ComputedTraitCondition):
            values = [facts.computed.get(node.trait)]
        else:
            values = [account.get(node.trait) for account in facts.accounts]
        for value in values:
            moment = _instant(value)
            if moment is not None:
                found.add(moment)
                found.add(_midnight(moment.astimezone(UTC).date() + timedelta(days=node.days)))
    return sorted(moment for moment in found if moment > now)[:MAX_CHECK_CANDIDATES]


def next_change(definition: AudienceDefinition, item: Mapping[str, Any], catalog: Catalog, now: datetime,
                result: bool, accounts: Sequence[Mapping[str, Any]] = (),
                audiences: Iterable[str] = ()) -> datetime | None:
    """The first instant after ``now`` at which the audience's result differs from ``result``
    if the profile does not change (nested audiences read as they are now); None: never."""
    facts = facts_from_item(item, catalog, now, accounts, frozenset(audiences))
    return next_change_of(definition, facts, catalog, now, result)


def next_change_of(definition: AudienceDefinition, facts: Facts, catalog: Catalog, now: datetime,
                   result: bool) -> datetime | None:
    """``next_change`` from facts already read (the states are parsed once; only the
    computed traits' values depend on the instant)."""
    for moment in change_candidates(definition, facts, catalog, now):
        later = Facts(facts.traits, computed_values(catalog, facts.aggregates, moment), facts.aggregates,
                      facts.accounts, facts.audiences)
        if evaluate(definition.condition, later, moment) != result:
            return moment
    return None

