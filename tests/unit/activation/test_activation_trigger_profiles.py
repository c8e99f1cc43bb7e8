"""Trigger rules with conditions on the person's profile (``profile_where``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cdp.activation.destinations import DestinationConfig, Trigger
from cdp.activation.dispatch import ActivationRouter, Person
from cdp.activation.router import Routed, trigger_matches

ENTERPRISE = {"path": "traits.plan", "op": "equals", "value": "enterprise"}


def pricing_view(user: str = "u1") -> dict[str, Any]:
    return {"type": "page", "name": "Pricing", "userId": user, "messageId": f"m-{user}",
            "timestamp": "2026-12-06T10:00:00.000Z"}


def test_a_profile_condition_needs_a_profile_that_passes_it() -> None:
    trigger = Trigger.model_validate({"name": "big-pricing", "event_type": "page", "event": "Pricing",
                                      "profile_where": [ENTERPRISE, {"path": "identifiers.email", "op": "exists"}]})
    enterprise = {"traits": {"plan": "enterprise"}, "identifiers": {"email": ["a@example.com"]}}
    assert trigger_matches(trigger, pricing_view(), set(), enterprise)
    assert not trigger_matches(trigger, pricing_view(), set(), {**enterprise, "traits": {"plan": "free"}})
    assert not trigger_matches(trigger, pricing_view(), set(), {"traits": {"plan": "enterprise"}, "identifiers": {}})
    assert not trigger_matches(trigger, pricing_view(), set(), None)  # no profile yet
    assert "whose profile has traits.plan" in trigger.summary()


class People:
    def __init__(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        self.profiles = profiles

    def person_of(self, event: Mapping[str, Any], need_audiences: bool) -> Person:
        user = str(event.get("userId"))
        return Person(f"p-{user}", frozenset(), self.profiles.get(user))


class Queues:
    def __init__(self) -> None:
        self.sent: list[Routed] = []

    def send(self, destination: DestinationConfig, messages: Sequence[Routed]) -> None:
        self.sent += messages


def test_the_router_sends_only_events_of_people_whose_profile_passes() -> None:
    destination = DestinationConfig.model_validate({
        "id": "alerts", "name": "Alerts", "type": "slack",
        "triggers": [{"name": "big-pricing", "event_type": "page", "event": "Pricing", "profile_where": [ENTERPRISE]}],
        "settings": {"webhook_url_secret_name": "/cdp/slack"}})
    queues = Queues()
    people = People({"ana": {"traits": {"plan": "enterprise"}, "identifiers": {}},
                     "bo": {"traits": {"plan": "free"}, "identifiers": {}}})
    stats = ActivationRouter([destination], queues, people).route_events(
        [pricing_view("ana"), pricing_view("bo"), pricing_view("new")])
    assert [m.body["profile_id"] for m in queues.sent] == ["p-ana"]
    assert stats.messages == 1
