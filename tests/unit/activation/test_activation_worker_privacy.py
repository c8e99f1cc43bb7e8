"""What a destination function never sends: a suppressed profile's data, or a profile that
fails the destination's filters; exits still go out (with identifiers only)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from test_activation_worker import (
    FakeLog,
    FakeProfiles,
    FakeQueues,
    RecordingDestination,
    config,
    event_message,
    membership,
    profile,
    record,
)

from cdp.activation.worker import DestinationWorker

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def worker(destination: RecordingDestination, profiles: FakeProfiles, log: FakeLog | None = None,
           **overrides: object) -> DestinationWorker:
    return DestinationWorker(config(**overrides), destination, FakeQueues(), profiles, log)


def test_a_suppressed_profile_gets_no_entry_and_no_event_but_its_exit_goes_out() -> None:
    hidden = dataclasses.replace(profile("p1", "ana@example.com"), suppressed=True)
    destination, log = RecordingDestination(), FakeLog()
    result = worker(destination, FakeProfiles({"p1": hidden, "p2": profile("p2", "bo@example.com")}), log).handle([
        record(membership("p1", "pro", "entered", 1), "m1", group="p1"),
        record(event_message("e1", "p1"), "m2", group="p1"),
        record(membership("p2", "pro", "entered", 1), "m3", group="p2"),
        record(membership("p1", "pro", "exited", 2), "m4", group="p1"),
    ], now=NOW)

    sent = [(b.get("profile_id"), b.get("transition", b["kind"])) for b in destination.sent]
    assert sent == [("p2", "entered"), ("p1", "exited")]
    assert destination.sent[1]["profile"]["traits"] == {} and destination.sent[1]["profile"]["fields"] == {}
    assert result.failures == [] and result.delivered == 4  # the kept-back messages are done, not retried
    counts = log.written[0][1]
    assert counts.not_sent == 2 and counts.delivered == 4


def test_destination_filters_test_the_profile_as_it_is_when_sent() -> None:
    filters = [{"path": "traits.plan", "op": "equals", "value": "pro"},
               {"path": "identifiers.email", "op": "exists"}]
    pro, free = profile("p1", "ana@example.com"), profile("p2", "bo@example.com", plan="free")
    destination = RecordingDestination()
    work = worker(destination, FakeProfiles({"p1": pro, "p2": free}), filters=filters)
    work.handle([record(membership("p1", "pro", "entered", 1), "m1", group="p1"),
                 record(membership("p2", "pro", "entered", 1), "m2", group="p2"),
                 record(membership("p2", "pro", "exited", 2), "m3", group="p2")], now=NOW)

    assert [(b["profile_id"], b["transition"]) for b in destination.sent] == [("p1", "entered"), ("p2", "exited")]
    assert dict(work.refused) == {"destination filter not matched: traits.plan": 1}


def test_a_destination_is_built_again_after_its_max_age_so_a_rotated_secret_is_used() -> None:
    from cdp.activation.delivery import OutboundMessage, Outcome
    from cdp.activation.registry import RefreshingDestination

    now = [0.0]
    secrets = iter(["old", "new"])
    built: list[str] = []

    class Signed:
        def __init__(self, secret: str) -> None:
            self.secret = secret

        def send(self, messages: list[OutboundMessage]) -> list[Outcome]:
            built.append(self.secret)
            return [Outcome("delivered")] * len(messages)

    destination = RefreshingDestination(lambda: Signed(next(secrets)), max_age_s=300, clock=lambda: now[0])
    message = OutboundMessage("d1", {"kind": "event"})
    destination.send([message])
    now[0] = 299.0
    destination.send([message])
    now[0] = 300.0
    destination.send([message])
    assert built == ["old", "old", "new"]
