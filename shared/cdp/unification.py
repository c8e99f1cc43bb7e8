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
   ``group`` events also update the account and link it to the profile.

Every write is idempotent and every state is order-insensitive
(``cdp.identity.profile_state``), so a retried or duplicated batch converges to the
same graph and profiles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdp.aws.identity_graph import CommitConflict, DynamoIdentityGraph, account_key
from cdp.aws.profile_store import blocked_record, membership_records
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import ExtractedIdentifiers, Identifier, extract_identifiers
from cdp.identity.profile_state import ProfileState, fold_account_event, fold_event, merge_states
from cdp.observability import logger


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
    by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class UnificationStage:
    def __init__(self, graph: DynamoIdentityGraph, records: Records,
                 config: IdentityConfig | Callable[[], IdentityConfig]) -> None:
        self._graph = graph
        self._records = records
        # The settings in force, asked for once per batch (an admin may change them).
        self._settings = config if callable(config) else (lambda: config)
        self._config = self._settings()
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

    def store(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Unify a batch: first with one commit for the whole batch, and if a concurrent
        consumer changed something it read, again with one commit per event."""
        self._config = self._settings()
        try:
            records = self._unify(events, batched=True)
        except CommitConflict:
            self.stats.batch_conflicts += 1
            records = self._unify(events, batched=False)
        if records:
            self._records.put(records)

    def _unify(self, events: list[tuple[str, dict[str, Any]]], batched: bool) -> list[dict[str, Any]]:
        graph = self._graph
        graph.begin_batch(self._config, batched=batched)
        extracted = [(event, extract_identifiers(event, self._config)) for _, event in events]
        wanted: set[Identifier] = set()
        for _, found in extracted:
            wanted.update(found.identifiers)
            if found.previous_id is not None:
                wanted.update({Identifier("anonymous_id", found.previous_id),
                               Identifier("user_id", found.previous_id)})
        groups = {str(e["groupId"]) for e, _ in extracted if e.get("type") == "group" and e.get("groupId")}
        graph.prefetch(wanted, [account_key(g) for g in groups])

        deltas: dict[str, ProfileState] = {}
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
        for profile_id, delta in deltas.items():
            target = graph.live_profile(profile_id) or profile_id
            by_survivor[target] = merge_states(by_survivor[target], delta) if target in by_survivor else delta
        for profile_id, delta in by_survivor.items():
            graph.apply_state(profile_id, delta)
        self.stats.profiles_touched += len(by_survivor)
        for group_id, delta in accounts.items():
            graph.apply_account_state(group_id, delta)
        graph.flush()
        logger.debug("unified", extra={"events": len(events), "profiles": len(by_survivor),
                                       "accounts": len(accounts), "batched": batched})
        return records
