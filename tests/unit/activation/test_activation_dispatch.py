"""The router's batch (cdp.activation.dispatch.ActivationRouter): membership-stream images and
events turned into messages, sent once per destination, skipped destinations counted, the
people lookup made once per person per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from cdp.activation.destinations import DestinationConfig
from cdp.activation.dispatch import ActivationRouter, Person
from cdp.activation.router import Routed
from cdp.segmentation.audience_events import audience_message_id


def destination(id_: str = "hooks", **overrides: Any) -> DestinationConfig:
    data: dict[str, Any] = {"id": id_, "name": f"Destination {id_}", "type": "webhook",
                            "settings": {"url": "https://example.com/cdp", "secret_name": "cdp/hooks"}}
    data.update(overrides)
    return DestinationConfig.model_validate(data)


def image(profile: str, audience: str, member: bool, version: int) -> dict[str, Any]:
    """A memberships-table stream image, in DynamoDB JSON as the stream carries it."""
    item: dict[str, Any] = {"profile_id": {"S": profile}, "audience_id": {"S": audience},
                            "member": {"BOOL": member}, "profile_version": {"N": str(version)},
                            "changed_version": {"N": str(version)},
                            "updated_at": {"S": "2026-12-01T10:00:00.000Z"}}
    item["entered_at" if member else "exited_at"] = {"S": f"2026-12-01T10:00:0{version % 10}.000Z"}
    return item


def track(name: str, message_id: str, user: str | None = "u1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "track", "event": name, "messageId": message_id,
                             "timestamp": "2026-12-01T10:00:00.000Z", "properties": {}}
    if user is not None:
        event["userId"] = user
    event.update(fields)
    return event


class RecordingQueues:
    def __init__(self, fail_for: str | None = None) -> None:
        self.calls: list[tuple[str, list[Routed]]] = []
        self.fail_for = fail_for

    def send(self, destination: DestinationConfig, messages: Sequence[Routed]) -> None:
        if destination.id == self.fail_for:
            raise RuntimeError("queue refused")
        self.calls.append((destination.id, list(messages)))


class CountingPeople:
    """Person per userId; counts lookups (and those that asked for audiences)."""

    def __init__(self, people: Mapping[str, Person]) -> None:
        self.people = people
        self.lookups: list[tuple[Any, bool]] = []

    def person_of(self, event: Mapping[str, Any], need_audiences: bool) -> Person:
        self.lookups.append((event.get("userId"), need_audiences))
        known = self.people.get(str(event.get("userId")))
        if known is None:
            return Person(None)
        return known if need_audiences else Person(known.profile_id)


# --- membership changes ------------------------------------------------------------------

def test_entries_and_exits_go_to_the_destinations_listing_the_audience_in_one_send_each() -> None:
    a = destination("a", audiences=["pro", "vip"])
    b = destination("b", audiences=["vip"])
    queues = RecordingQueues()
    router = ActivationRouter([a, b], queues)

    stats = router.route_changes([
        (None, image("p1", "pro", True, 3)),
        (image("p2", "vip", True, 2), image("p2", "vip", False, 5)),
        (None, image("p3", "other", True, 1)),
    ])

    assert [(d, [(m.message_group_id, m.body["transition"], m.body["audience_id"]) for m in ms])
            for d, ms in queues.calls] == [
        ("a", [("p1", "entered", "pro"), ("p2", "exited", "vip")]),
        ("b", [("p2", "exited", "vip")]),
    ]
    assert queues.calls[0][1][0].deduplication_id == audience_message_id("pro", "p1", "entered", 3)
    assert (stats.inputs, stats.changes, stats.messages) == (3, 3, 3)
    assert not stats.skipped


def test_writes_that_change_no_membership_send_nothing() -> None:
    queues = RecordingQueues()
    router = ActivationRouter([destination(audiences=["pro"])], queues)

    stats = router.route_changes([
        (image("p1", "pro", True, 3), image("p1", "pro", True, 4)),  # next_check moved
        (image("p1", "pro", True, 3), None),  # erased
        (None, image("p2", "pro", False, 1)),  # created as a non-member
    ])

    assert queues.calls == []
    assert (stats.inputs, stats.changes, stats.messages) == (3, 0, 0)


def test_a_disabled_destination_is_counted_as_skipped_with_its_reason() -> None:
    queues = RecordingQueues()
    router = ActivationRouter([destination("off", audiences=["pro"], enabled=False),
                               destination("on", audiences=["pro"])], queues)

    stats = router.route_changes([(None, image("p1", "pro", True, 1)), (None, image("p2", "pro", True, 1))])

    assert [d for d, _ in queues.calls] == ["on"]
    assert stats.skipped == {"off: destination is disabled": 2}
    assert stats.as_metrics() == {"RoutedInputs": 2, "RoutedChanges": 2, "RoutedEvents": 0,
                                  "RoutedMessages": 2, "RoutingSkipped": 2}


def test_a_queue_refusal_fails_the_batch() -> None:
    router = ActivationRouter([destination(audiences=["pro"])], RecordingQueues(fail_for="hooks"))
    with pytest.raises(RuntimeError, match="queue refused"):
        router.route_changes([(None, image("p1", "pro", True, 1))])


# --- events --------------------------------------------------------------------------

def test_events_go_to_destinations_whose_trigger_matches_with_the_profile_as_group() -> None:
    buys = destination("buys", triggers=[{"name": "Bought", "event": "Order Completed"}])
    views = destination("views", triggers=[{"name": "Pricing", "event_type": "page", "event": "Pricing"}])
    queues = RecordingQueues()
    people = CountingPeople({"u1": Person("prof_1")})
    router = ActivationRouter([buys, views], queues, people)

    stats = router.route_events([
        track("Order Completed", "m1"),
        track("Signed Up", "m2"),
        {"type": "page", "name": "Pricing", "messageId": "m3", "userId": "u1"},
        {"type": "page", "name": "Home", "messageId": "m4", "userId": "u1"},
    ])

    sent = {d: [(m.body["message_id"], m.message_group_id, m.deduplication_id, m.body["triggers"]) for m in ms]
            for d, ms in queues.calls}
    assert sent == {"buys": [("m1", "prof_1", "buys:m1", ["Bought"])],
                    "views": [("m3", "prof_1", "views:m3", ["Pricing"])]}
    assert (stats.inputs, stats.events, stats.messages) == (4, 2, 2)
    assert queues.calls[0][1][0].body["profile_id"] == "prof_1"


def test_no_lookup_for_events_no_trigger_wants() -> None:
    people = CountingPeople({"u1": Person("prof_1")})
    router = ActivationRouter([destination(triggers=[{"name": "Bought", "event": "Order Completed"}])],
                              RecordingQueues(), people)

    stats = router.route_events([track("Signed Up", "m1"), {"type": "identify", "userId": "u1", "messageId": "m2"}])

    assert people.lookups == [] and stats.events == 0 and stats.inputs == 2


def test_people_are_looked_up_once_per_person_per_batch() -> None:
    people = CountingPeople({"u1": Person("prof_1"), "u2": Person("prof_2")})
    queues = RecordingQueues()
    router = ActivationRouter([destination(triggers=[{"name": "Any", "event_type": "track"}])], queues, people)

    router.route_events([track("A", "m1", "u1"), track("B", "m2", "u2"), track("C", "m3", "u1"),
                         track("D", "m4", "u1")])

    assert people.lookups == [("u1", False), ("u2", False)]
    assert [m.message_group_id for m in queues.calls[0][1]] == ["prof_1", "prof_2", "prof_1", "prof_1"]


def test_audiences_are_read_only_when_a_trigger_needs_them_and_then_once() -> None:
    plain = destination("plain", triggers=[{"name": "Any", "event": "A"}])
    members = destination("members", triggers=[{"name": "Vip buys", "event": "B", "audience": "vip"}])
    people = CountingPeople({"u1": Person("prof_1", frozenset({"vip"})), "u2": Person("prof_2")})
    queues = RecordingQueues()
    router = ActivationRouter([plain, members], queues, people)

    stats = router.route_events([track("A", "m1", "u1"), track("B", "m2", "u1"), track("B", "m3", "u1"),
                                 track("B", "m4", "u2"), track("B", "m5", "u2"), track("A", "m6", "u2")])

    # u1: first without audiences, then once with them; u2 is in no audience: one lookup with
    # audiences serves the rest of the batch.
    assert people.lookups == [("u1", False), ("u1", True), ("u2", True)]
    sent = {d: [m.body["message_id"] for m in ms] for d, ms in queues.calls}
    assert sent == {"plain": ["m1", "m6"], "members": ["m2", "m3"]}
    assert stats.events == 4


def test_without_a_people_lookup_the_events_own_ids_group_the_messages() -> None:
    queues = RecordingQueues()
    router = ActivationRouter([destination(triggers=[{"name": "Any", "event": "A"}])], queues)

    router.route_events([track("A", "m1", None, anonymousId="anon-1"), track("A", "m2", "u9")])

    assert [(m.message_group_id, m.body["profile_id"]) for m in queues.calls[0][1]] == [
        ("anon-1", None), ("u9", None)]


def test_an_unknown_person_is_grouped_by_the_events_ids() -> None:
    queues = RecordingQueues()
    router = ActivationRouter([destination(triggers=[{"name": "Any", "event": "A"}])], queues,
                              CountingPeople({}))

    router.route_events([track("A", "m1", "new-user")])

    assert [m.message_group_id for m in queues.calls[0][1]] == ["new-user"]


def test_skipped_events_are_counted_by_destination_and_reason() -> None:
    hooks = destination("hooks", triggers=[{"name": "Any", "event": "A"}], consent_categories=["marketing"])
    off = destination("off", enabled=False, triggers=[{"name": "Any", "event": "A"}])
    queues = RecordingQueues()
    router = ActivationRouter([hooks, off], queues)

    stats = router.route_events([
        track("A", "m1", integrations={"Webhooks": False}),
        track("A", "m2", context={"consent": {"categoryPreferences": {"marketing": False}}}),
        track("A", "m3", None),  # no person
        track("A", "m4", context={"consent": {"categoryPreferences": {"marketing": True}}}),
    ])

    assert [m.body["message_id"] for _, ms in queues.calls for m in ms] == ["m4"]
    assert stats.skipped == {
        "off: destination is disabled": 4,
        "hooks: integrations object disables 'Webhooks'": 1,
        "hooks: not consented (refused: marketing)": 1,
        "hooks: event has no messageId or no person": 1,
    }
    assert stats.events == 4 and stats.messages == 1
