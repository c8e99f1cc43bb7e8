"""SegmentEvaluator with in-memory ports: what is written, what is emitted, and when."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from cdp.ingest import StreamRecord
from cdp.segmentation.evaluator import SegmentEvaluator
from cdp.segmentation.membership import Decision, Membership
from tests.segmentation_items import NOW, audience, catalog_of, home_item, merged_home_item, profile_item

PRO = audience("pro", {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"})


class MemoryMemberships:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Membership] = {}

    def of_profile(self, profile_id: str) -> dict[str, Membership]:
        return {aid: m for (pid, aid), m in self.items.items() if pid == profile_id}

    def some_of_profile(self, profile_id: str, audience_ids: Iterable[str]) -> dict[str, Membership]:
        wanted = set(audience_ids)
        return {aid: m for aid, m in self.of_profile(profile_id).items() if aid in wanted}

    def apply(self, profile_id: str, decisions: Sequence[Decision], stored: dict[str, Membership]) -> list[Decision]:
        for d in decisions:
            if d.replay:
                continue
            before = stored.get(d.audience_id) or Membership(d.audience_id, False)
            self.items[(profile_id, d.audience_id)] = replace(
                before, member=d.member, profile_version=d.profile_version,
                changed_version=d.profile_version if d.transition else before.changed_version,
                entered_at=d.at if d.transition == "entered" else before.entered_at,
                exited_at=d.at if d.transition == "exited" else before.exited_at, next_check=d.next_check)
        return list(decisions)


class MemorySink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def put_records(self, records: list[StreamRecord]) -> None:
        self.events.extend(json.loads(r.data)["event"] for r in records)


def evaluator() -> tuple[SegmentEvaluator, MemoryMemberships, MemorySink]:
    memberships, sink = MemoryMemberships(), MemorySink()
    catalog = catalog_of(PRO)
    return SegmentEvaluator(lambda: catalog, memberships, lambda _: [], sink, now=lambda: NOW), memberships, sink


def test_entry_is_stored_and_emitted_once_per_transition_even_when_redelivered() -> None:
    subject, memberships, sink = evaluator()
    old, new = profile_item("p1", version=1), profile_item("p1", version=2, traits={"plan": "pro"})
    subject.process(old, new)
    subject.process(old, new)
    assert memberships.of_profile("p1")["pro"].member
    assert [e["event"] for e in sink.events] == ["Audience Entered", "Audience Entered"]
    assert sink.events[0] == sink.events[1]
    assert (subject.stats.entered, subject.stats.replayed) == (1, 1)


def test_merged_away_home_profile_exits_without_an_event() -> None:
    subject, memberships, sink = evaluator()
    subject.process(None, home_item("a1", "a.YTE", traits={"plan": "pro"}))
    subject.process(home_item("a1", "a.YTE", traits={"plan": "pro"}), merged_home_item("a1", "p9"))
    assert not memberships.of_profile("a.YTE")["pro"].member
    assert [(e["event"], e["anonymousId"]) for e in sink.events] == [("Audience Entered", "a1")]
    assert subject.stats.merged_exits == 1


def test_profile_without_user_or_anonymous_id_is_stored_but_gets_no_event() -> None:
    subject, memberships, sink = evaluator()
    subject.process(None, profile_item("p1", traits={"plan": "pro"}, ids=("ident#email:x@y",)))
    assert memberships.of_profile("p1")["pro"].member
    assert sink.events == [] and subject.stats.skipped_events == 1


def test_non_profile_items_and_empty_catalogs_do_nothing() -> None:
    subject, memberships, sink = evaluator()
    assert subject.process(None, {"pk": {"S": "acct#g1"}}) == []
    empty = SegmentEvaluator(lambda: catalog_of(), memberships, lambda _: [], sink, now=lambda: NOW)
    assert empty.process(None, profile_item("p1", traits={"plan": "pro"})) == []
    assert memberships.items == {} and sink.events == []
