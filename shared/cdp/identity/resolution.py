"""Identity resolution rules, independent of storage: what one event does to the graph.

``plan_resolution`` follows Segment's documented algorithm:

1. Look up the profiles that hold any of the event's identifiers.
2. None: a new profile with all of them.
3. Otherwise the event's identifiers plus those of every matched profile must fit each
   type's limit (at most ``limit`` distinct values per type). If they fit: attach (one
   profile) or merge (several) into a survivor. If not, drop the event's
   lowest-priority identifier and start again at 1 — so two profiles that each hold a
   different ``user_id`` (limit 1) are never merged, and an event whose ``user_id``
   conflicts keeps only what is safe.

The survivor of a merge is chosen deterministically (earliest ``created_at``, then the
smallest id), so every consumer picks the same one. ``MemoryIdentityGraph`` applies
plans in memory; it is the reference the DynamoDB graph is tested against.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import Identifier


@dataclass(frozen=True)
class ProfileView:
    profile_id: str
    created_at: str  # ISO 8601; orders survivors
    identifiers: frozenset[Identifier]


@dataclass(frozen=True)
class ResolutionPlan:
    survivor: str | None  # None: create a new profile
    merged: tuple[str, ...] = ()  # profiles merged into the survivor
    add: tuple[Identifier, ...] = ()  # identifiers the survivor gains
    dropped: tuple[Identifier, ...] = ()  # the event's identifiers refused by merge protection
    blocked_merge: tuple[str, ...] = ()  # profiles a dropped identifier would have merged in

    @property
    def creates(self) -> bool:
        return self.survivor is None


Lookup = Callable[[list[Identifier]], dict[Identifier, ProfileView]]


def by_priority(identifiers: Iterable[Identifier], config: IdentityConfig) -> list[Identifier]:
    """Highest priority first; ties by type then value, so the order is deterministic."""
    return sorted(set(identifiers), key=lambda i: (config.type_of(i.type).priority, i.type, i.value))


def fits_limits(identifiers: Iterable[Identifier], config: IdentityConfig) -> bool:
    counts: dict[str, int] = defaultdict(int)
    for identifier in set(identifiers):
        counts[identifier.type] += 1
        if counts[identifier.type] > config.type_of(identifier.type).limit:
            return False
    return True


def survivor_of(profiles: Iterable[ProfileView]) -> ProfileView:
    return min(profiles, key=lambda p: (p.created_at, p.profile_id))


def plan_resolution(identifiers: Iterable[Identifier], lookup: Lookup, config: IdentityConfig) -> ResolutionPlan:
    """What the event's identifiers do to the graph; see the module docstring."""
    remaining = by_priority(identifiers, config)
    dropped: list[Identifier] = []
    blocked: set[str] = set()
    while remaining:
        matches = lookup(remaining)
        profiles = {p.profile_id: p for p in matches.values()}
        if not profiles:
            return ResolutionPlan(None, add=tuple(remaining), dropped=tuple(dropped),
                                  blocked_merge=tuple(sorted(blocked)))
        combined = set(remaining).union(*(p.identifiers for p in profiles.values()))
        if fits_limits(combined, config):
            survivor = survivor_of(profiles.values())
            merged = tuple(sorted(pid for pid in profiles if pid != survivor.profile_id))
            new = tuple(i for i in by_priority(combined, config) if i not in survivor.identifiers)
            return ResolutionPlan(survivor.profile_id, merged=merged, add=new, dropped=tuple(dropped),
                                  blocked_merge=tuple(sorted(blocked - set(merged) - {survivor.profile_id})))
        lowest = remaining.pop()
        dropped.append(lowest)
        if lowest in matches:
            blocked.add(matches[lowest].profile_id)
    return ResolutionPlan(None, dropped=tuple(dropped), blocked_merge=tuple(sorted(blocked)))


@dataclass
class MemoryIdentityGraph:
    """An in-memory identity graph applying plans: the reference for the real one."""

    config: IdentityConfig
    owner: dict[Identifier, str] = field(default_factory=dict)
    profiles: dict[str, ProfileView] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)
    new_id: Callable[[int], str] = field(default=lambda n: f"p{n:06d}")
    clock: Callable[[int], str] = field(default=lambda n: f"{n:012d}")
    _created: int = 0

    def lookup(self, identifiers: list[Identifier]) -> dict[Identifier, ProfileView]:
        return {i: self.profiles[self.owner[i]] for i in identifiers if i in self.owner}

    def resolve_profile(self, profile_id: str) -> str:
        while profile_id in self.merged_into:
            profile_id = self.merged_into[profile_id]
        return profile_id

    def apply(self, identifiers: Iterable[Identifier]) -> tuple[str | None, ResolutionPlan]:
        """Resolve one event's identifiers; returns the profile it belongs to (None if it has none)."""
        plan = plan_resolution(identifiers, self.lookup, self.config)
        if plan.creates and not plan.add:
            return None, plan
        if plan.creates:
            self._created += 1
            survivor = ProfileView(self.new_id(self._created), self.clock(self._created), frozenset())
        else:
            assert plan.survivor is not None
            survivor = self.profiles[plan.survivor]
        gained = set(plan.add)
        for merged_id in plan.merged:
            gained |= self.profiles.pop(merged_id).identifiers
            self.merged_into[merged_id] = survivor.profile_id
        view = ProfileView(survivor.profile_id, survivor.created_at, survivor.identifiers | gained)
        self.profiles[view.profile_id] = view
        for identifier in view.identifiers:
            self.owner[identifier] = view.profile_id
        return view.profile_id, plan

    def partition(self) -> set[frozenset[Identifier]]:
        """Which identifiers are together: what must not depend on order or concurrency."""
        return {p.identifiers for p in self.profiles.values()}
