"""The unification stage of the stream consumer: events -> identity graph -> profiles.

For one batch of newly stored events, in stream order:

1. extract each event's identifiers (``cdp.identity.identifiers``); an ``alias`` adds
   its ``previousId`` as the anonymous id or user id the graph already knows (an
   anonymous id when it knows neither, the usual case of a visitor who signs up);
2. read every identifier of the batch, and the profiles holding them, in one pass
   (``DynamoIdentityGraph.prefetch``);
3. resolve each event to a profile (create, attach, merge; merge protection drops
   identifiers and the event is recorded as a blocked merge);
4. fold the events of each profile into one state change and write it once per profile
   (a profile merged later in the batch receives its events through the survivor);
   ``group`` events also update the account and link it to the profile. Events that an
   active aggregate spec selects (``cdp.segmentation.catalog``) are folded into the
   profile's aggregate states in the same write, once each (``cdp.segmentation.tallies``);
5. events that a live account activity spec selects add their profile (a tag) to the day
   buckets of each of its accounts (``cdp.segmentation.account_activity``): a set union,
   written with the account's ``group`` traits, once per account per batch.

Every write is idempotent and every state is order-insensitive
(``cdp.identity.profile_state``), so a retried or duplicated batch converges to the
same graph and profiles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cdp.aws.identity_graph import CommitConflict, DynamoIdentityGraph, account_key
from cdp.aws.profile_store import blocked_record, membership_records
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import ExtractedIdentifiers, Identifier, extract_identifiers
from cdp.identity.profile_state import ProfileState, fold_account_event, fold_event, merge_states
from cdp.observability import logger
from cdp.segmentation import account_activity
from cdp.segmentation.catalog import Catalog
from cdp.segmentation.tallies import StreamPosition, selected_by_any

StagedEvent = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], StreamPosition | None]


class Records(Protocol):
    def put(self, items: list[dict[str, Any]]) -> None: ...


@dataclass
class UnificationStats:
    events: int = 0
    without_identifiers: int = 0
    profiles_touched: int = 0
    blocked: int = 0
    refused_identifiers: int = 0
    # Batches resolved again one event at a time: a concurrent change, or too many changes
    # of one profile for one transaction.
    batch_conflicts: int = 0
    aggregated: int = 0  # events kept for a fold into aggregate states
    account_activity: int = 0  # events kept for the activity of their profile's accounts
    by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class UnificationStage:
    def __init__(self, graph: DynamoIdentityGraph, records: Records,
                 config: IdentityConfig | Callable[[], IdentityConfig],
                 catalog: Catalog | Callable[[], Catalog] | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._graph = graph
        self._records = records
        # The settings and definitions in force, asked for once per batch (admins change them).
        self._settings = config if callable(config) else (lambda: config)
        self._config = self._settings()
        if callable(catalog):
            self._catalogs = catalog
        else:
            fixed = catalog or Catalog()
            self._catalogs = lambda: fixed
        self._catalog = self._catalogs()
        self._now = now
        self.stats = UnificationStats()

    def _identifiers(self, extracted: ExtractedIdentifiers) -> list[Identifier]:
        self.stats.refused_identifiers += len(extracted.refused)
        identifiers = list(extracted.identifiers)
        previous = extracted.previous_id
        if previous is not None:
            as_anonymous, as_user = Identifier("anonymous_id", previous), Identifier("user_id", previous)
            if self._graph.holds_identifier(as_anonymous) or not self._graph.holds_identifier(as_user):
                identifiers.append(as_anonymous)
            else:
                identifiers.append(as_user)  # merge protection decides (two user ids never merge)
        return identifiers

    def store(self, events: Sequence[StagedEvent]) -> None:
        """Unify a batch: first with one commit for the whole batch, and if a concurrent
        consumer changed something it read, again with one commit per event.

        Each event is ``(source id, event)`` or ``(source id, event, stream position)``;
        without a position an event is folded into aggregates even if it was before.
        """
        self._config = self._settings()
        self._catalog = self._catalogs()
        try:
            records = self._unify(events, batched=True)
        except CommitConflict:
            self.stats.batch_conflicts += 1
            records = self._unify(events, batched=False)
        if records:
            self._records.put(records)

    def _unify(self, events: Sequence[StagedEvent], batched: bool) -> list[dict[str, Any]]:
        graph = self._graph
        graph.begin_batch(self._config, batched=batched)
        specs = self._catalog.specs
        activity_specs = self._catalog.activity_specs
        extracted = [(staged[1], extract_identifiers(staged[1], self._config)) for staged in events]
        # Stream order and position of each event (marks must see one key's events in order).
        positions = {id(staged[1]): (n, staged[2] if len(staged) > 2 else None) for n, staged in enumerate(events)}
        wanted: set[Identifier] = set()
        for _, found in extracted:
            wanted.update(found.identifiers)
            if found.previous_id is not None:
                wanted.update({Identifier("anonymous_id", found.previous_id),
                               Identifier("user_id", found.previous_id)})
        groups = {str(e["groupId"]) for e, _ in extracted if e.get("type") == "group" and e.get("groupId")}
        graph.prefetch(wanted, [account_key(g) for g in groups])

        deltas: dict[str, ProfileState] = {}
        folds: dict[str, list[tuple[int, StreamPosition | None, dict[str, Any]]]] = {}
        active: dict[str, list[dict[str, Any]]] = {}  # profile -> events some activity spec selects
        accounts: dict[str, ProfileState] = {}
        records: list[dict[str, Any]] = []
        for event, found in extracted:
            self.stats.events += 1
            identifiers = self._identifiers(found)
            first_state = fold_event(ProfileState(), event)
            profile_id, plan = graph.resolve(identifiers, cause=event, initial_state=first_state)
            if profile_id is None:
                self.stats.without_identifiers += 1
                continue
            deltas[profile_id] = fold_event(deltas.get(profile_id, ProfileState()), event)
            if specs and selected_by_any(specs, event):
                folds.setdefault(profile_id, []).append((*positions[id(event)], event))
            if activity_specs and account_activity.selected_by_any(activity_specs, event):
                active.setdefault(profile_id, []).append(event)
            if plan.dropped:
                self.stats.blocked += 1
                records.append(blocked_record(profile_id, event["messageId"], event["timestamp"],
                                              [i.key() for i in plan.dropped], list(plan.blocked_merge)))
            if event.get("type") == "group" and event.get("groupId"):
                group_id = str(event["groupId"])
                accounts[group_id] = fold_account_event(accounts.get(group_id, ProfileState()), event)
                records.extend(membership_records(profile_id, group_id))

        # A profile merged into another later in the batch hands its events to the survivor.
        by_survivor: dict[str, ProfileState] = {}
        survivor_folds: dict[str, list[tuple[int, StreamPosition | None, dict[str, Any]]]] = {}
        for profile_id, delta in deltas.items():
            target = graph.live_profile(profile_id) or profile_id
            by_survivor[target] = merge_states(by_survivor[target], delta) if target in by_survivor else delta
            survivor_folds.setdefault(target, []).extend(folds.get(profile_id, []))
        now = self._now()
        for profile_id, delta in by_survivor.items():
            kept = [(position, event) for _, position, event in sorted(survivor_folds.get(profile_id, []),
                                                                       key=lambda fold: fold[0])]
            self.stats.aggregated += len(kept)
            graph.apply_state(profile_id, delta, kept, specs, now)
        self.stats.profiles_touched += len(by_survivor)
        activity = self._account_activity(active)
        unread = [account_key(g) for g in activity if g not in accounts]
        if unread:
            graph.prefetch((), unread)  # one read for the accounts the batch's group calls did not bring
        specs_by_id = {spec_id: a.spec for spec_id, a in activity_specs.items()}
        for group_id in sorted(accounts.keys() | activity.keys()):
            graph.apply_account_state(group_id, accounts.get(group_id, ProfileState()), activity.get(group_id),
                                      specs_by_id, now)
        graph.flush()
        logger.debug("unified", extra={"events": len(events), "profiles": len(by_survivor),
                                       "accounts": len(accounts.keys() | activity.keys()), "batched": batched})
        return records

    def _account_activity(self, active: dict[str, list[dict[str, Any]]]) -> account_activity.Additions:
        """What the batch's selected events add to their profiles' accounts' activity,
        by account (each profile under its survivor, with the accounts it has now)."""
        graph = self._graph
        by_survivor: dict[str, list[dict[str, Any]]] = {}
        for profile_id, events in active.items():
            by_survivor.setdefault(graph.live_profile(profile_id) or profile_id, []).extend(events)
        found: account_activity.Additions = {}
        for profile_id, events in by_survivor.items():
            groups = graph.accounts_of(profile_id)
            if groups:
                self.stats.account_activity += len(events)
                account_activity.merge_additions(found, account_activity.stream_additions(
                    profile_id, groups, self._catalog.activity_specs, events))
        return found
