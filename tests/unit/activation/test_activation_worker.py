"""A destination Lambda's batch: ``cdp.activation.worker.DestinationWorker`` (profiles read per
batch, consent on entries, exits with identifiers only, FIFO or batch path, the delivery
log's figures) and ``cdp.activation.runner.deliver_batch_records`` (standard queues: one
message per profile and audience, its *current* membership sent, whatever the order)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.activation.delivery import OutboundMessage, Outcome, RetryPolicy
from cdp.activation.delivery_log import DeliveryCounts, bucket_of
from cdp.activation.destinations import DestinationConfig
from cdp.activation.dispatch import Person
from cdp.activation.enrichment import profile_view, with_profile
from cdp.activation.runner import _collapse, deliver_batch_records
from cdp.activation.worker import DestinationWorker, person_key
from cdp.identity.identifiers import Identifier
from cdp.identity.profile_state import ProfileState, TraitValue
from cdp.profiles import UserProfile

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
AT = "2026-12-06T11:59:58.000Z"  # two seconds before NOW


# --- builders ----------------------------------------------------------------------------

def config(type_: str = "webhook", **overrides: Any) -> DestinationConfig:
    settings_by_type: dict[str, dict[str, Any]] = {
        "webhook": {"url": "https://example.com/cdp", "secret_name": "cdp/hooks"},
        "s3": {"bucket": "cdp-exports"},
        "hubspot": {"access_token_secret_name": "cdp/hubspot"},
    }
    data: dict[str, Any] = {"id": f"dest-{type_}", "name": "Destination", "type": type_,
                            "settings": settings_by_type[type_], "audiences": ["pro", "vip"],
                            "field_mapping": {"plan": "Plan"}}
    data.update(overrides)
    return DestinationConfig.model_validate(data)


def membership(profile: str, audience: str, transition: str, version: int, at: str = AT) -> dict[str, Any]:
    return {"kind": "audience_membership", "destination_id": "d", "message_id": f"{audience}-{profile}-{version}",
            "audience_id": audience, "profile_id": profile, "transition": transition,
            "event": "Audience Entered" if transition == "entered" else "Audience Exited",
            "version": version, "at": at}


def event_message(message_id: str, profile: str | None, user: str = "u1") -> dict[str, Any]:
    return {"kind": "event", "destination_id": "d", "message_id": message_id, "profile_id": profile,
            "triggers": ["Bought"], "event": {"type": "track", "event": "Order Completed", "userId": user,
                                              "messageId": message_id, "receivedAt": AT}}


def record(body: Any, message_id: str, *, group: str | None = None, received: int = 1,
           first: datetime | None = None) -> dict[str, Any]:
    """A record of Lambda's SQS event."""
    attributes = {"ApproximateReceiveCount": str(received), "SentTimestamp": "1",
                  "MessageDeduplicationId": f"dedup-{message_id}"}
    if first is not None:
        attributes["ApproximateFirstReceiveTimestamp"] = str(int(first.timestamp() * 1000))
    if group is not None:
        attributes["MessageGroupId"] = group
    return {"messageId": message_id, "receiptHandle": f"rh-{message_id}",
            "body": body if isinstance(body, str) else json.dumps(body), "attributes": attributes,
            "eventSource": "aws:sqs"}


def profile(profile_id: str, email: str, consent: dict[str, Any] | None = None, plan: str = "pro") -> UserProfile:
    state = ProfileState(traits={"plan": TraitValue(plan, AT, "m0"), "email": TraitValue(email, AT, "m0")},
                         consent=TraitValue(consent, AT, "m0") if consent is not None else None)
    return UserProfile(profile_id, AT, AT, (Identifier("email", email), Identifier("user_id", f"user-{profile_id}")),
                       (), state)


class FakeProfiles:
    def __init__(self, profiles: Mapping[str, UserProfile], memberships: Mapping[str, Mapping[str, bool]] | None = None,
                 people: Mapping[str, str] | None = None) -> None:
        self._profiles = profiles
        self._memberships = memberships or {}
        self._people = people or {}
        self.profile_reads: list[list[str]] = []
        self.person_reads: list[Any] = []
        self.membership_reads: list[dict[str, list[str]]] = []

    def profiles(self, profile_ids: Iterable[str]) -> dict[str, UserProfile | None]:
        ids = list(profile_ids)
        self.profile_reads.append(ids)
        return {pid: self._profiles.get(pid) for pid in ids}

    def audiences_of(self, profile_id: str) -> list[str]:
        return sorted(a for a, member in self._memberships.get(profile_id, {}).items() if member)

    def memberships_of(self, wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, bool]]:
        self.membership_reads.append({p: sorted(a) for p, a in wanted.items()})
        return {p: {a: self._memberships[p][a] for a in auds if a in self._memberships.get(p, {})}
                for p, auds in wanted.items()}

    def person_of(self, event: Mapping[str, Any], need_audiences: bool) -> Person:
        self.person_reads.append(event.get("userId"))
        return Person(self._people.get(str(event.get("userId"))))


class RecordingDestination:
    def __init__(self, answer: Callable[[Mapping[str, Any]], Outcome] | None = None,
                 raises: Exception | None = None) -> None:
        self.requests: list[list[Mapping[str, Any]]] = []
        self._answer = answer or (lambda body: Outcome("delivered"))
        self._raises = raises

    @property
    def sent(self) -> list[Mapping[str, Any]]:
        return [body for request in self.requests for body in request]

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        self.requests.append([m.body for m in messages])
        if self._raises is not None:
            raise self._raises
        return [self._answer(m.body) for m in messages]


class FakeQueues:
    def __init__(self) -> None:
        self.retried: list[tuple[str, float]] = []
        self.dead: list[tuple[str, str]] = []

    def retry_later(self, receipt_handle: str, delay_s: float) -> None:
        self.retried.append((receipt_handle, delay_s))

    def dead_letter(self, record: Mapping[str, Any], reason: str) -> None:
        self.dead.append((str(record["messageId"]), reason))


class FakeLog:
    def __init__(self) -> None:
        self.written: list[tuple[str, DeliveryCounts, datetime | None]] = []

    def record(self, destination_id: str, counts: DeliveryCounts, now: datetime | None = None) -> None:
        self.written.append((destination_id, counts, now))


# --- _collapse -----------------------------------------------------------------------------

def _pairs(*bodies: dict[str, Any]) -> list[tuple[dict[str, Any], OutboundMessage]]:
    return [({"messageId": f"r{n}"}, OutboundMessage(f"d{n}", body)) for n, body in enumerate(bodies)]


def test_collapse_keeps_the_newest_version_per_profile_and_audience_and_every_event() -> None:
    kept, superseded = _collapse(_pairs(
        membership("p1", "pro", "exited", 5),
        event_message("e1", "p1"),
        membership("p1", "pro", "entered", 4),
        membership("p1", "vip", "entered", 2),
        event_message("e2", "p1"),
        membership("p2", "pro", "entered", 1),
    ))
    assert [(r["messageId"], m.body.get("version")) for r, m in kept] == [
        ("r0", 5), ("r1", None), ("r3", 2), ("r4", None), ("r5", 1)]
    assert [r["messageId"] for r in superseded] == ["r2"]


def test_collapse_on_a_tie_keeps_the_last_received() -> None:
    kept, superseded = _collapse(_pairs(membership("p1", "pro", "entered", 3), membership("p1", "pro", "exited", 3)))
    assert [r["messageId"] for r, _ in kept] == ["r1"] and [r["messageId"] for r in superseded] == ["r0"]


def test_collapse_tolerates_a_missing_or_odd_version() -> None:
    odd = {**membership("p1", "pro", "entered", 1), "version": "not a number"}
    kept, superseded = _collapse(_pairs(membership("p1", "pro", "exited", 2), odd))
    assert [r["messageId"] for r, _ in kept] == ["r0"] and [r["messageId"] for r in superseded] == ["r1"]


# --- deliver_batch_records -----------------------------------------------------------------

def current_of(state: Mapping[str, Mapping[str, bool]]) -> Callable[[Mapping[str, Iterable[str]]], Any]:
    def current(wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, bool]]:
        return {p: {a: state[p][a] for a in auds if a in state.get(p, {})} for p, auds in wanted.items()}
    return current


def test_a_batch_sends_each_pairs_current_state_once_and_events_as_they_are() -> None:
    records = [
        record(membership("p1", "pro", "entered", 1), "m1"),
        record(membership("p1", "pro", "exited", 2), "m2"),
        record(event_message("e1", "p1"), "m3"),
        record(membership("p2", "pro", "exited", 7), "m4"),  # an old exit: p2 is a member again
    ]
    destination = RecordingDestination()
    queues = FakeQueues()

    result = deliver_batch_records(records, destination, queues, RetryPolicy(),
                                   current_of({"p1": {"pro": False}, "p2": {"pro": True}}), now=NOW)

    assert len(destination.requests) == 1
    sent = [(b["kind"], b.get("profile_id"), b.get("transition"), b.get("event")) for b in destination.sent]
    assert sent == [("audience_membership", "p1", "exited", "Audience Exited"),
                    ("event", "p1", None, destination.sent[1]["event"]),
                    ("audience_membership", "p2", "entered", "Audience Entered")]
    assert destination.sent[1]["event"]["messageId"] == "e1"
    assert (result.delivered, result.retried, result.dead_lettered, result.failures) == (4, 0, 0, [])


def test_a_pair_the_table_no_longer_holds_is_sent_as_an_exit() -> None:
    destination = RecordingDestination()
    deliver_batch_records([record(membership("gone", "pro", "entered", 3), "m1")], destination, FakeQueues(),
                          RetryPolicy(), current_of({}), now=NOW)
    assert [(b["transition"], b["event"]) for b in destination.sent] == [("exited", "Audience Exited")]


def test_the_current_state_is_read_once_for_the_kept_pairs_only() -> None:
    reads: list[dict[str, list[str]]] = []

    def current(wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, bool]]:
        reads.append({p: sorted(a) for p, a in wanted.items()})
        return {}

    deliver_batch_records([record(membership("p1", "pro", "entered", 1), "m1"),
                           record(membership("p1", "vip", "entered", 1), "m2"),
                           record(membership("p1", "pro", "exited", 2), "m3"),
                           record(event_message("e1", "p1"), "m4")],
                          RecordingDestination(), FakeQueues(), RetryPolicy(), current, now=NOW)
    assert reads == [{"p1": ["pro", "vip"]}]


def test_events_only_need_no_membership_read() -> None:
    def current(wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, bool]]:
        raise AssertionError("no membership to read")

    result = deliver_batch_records([record(event_message("e1", None), "m1")], RecordingDestination(), FakeQueues(),
                                   RetryPolicy(), current, now=NOW)
    assert result.delivered == 1


def test_a_request_that_raises_retries_every_sent_message_and_drops_the_superseded() -> None:
    records = [record(membership("p1", "pro", "entered", 1), "m1"),
               record(membership("p1", "pro", "entered", 2), "m2"),
               record(event_message("e1", "p1"), "m3")]
    queues = FakeQueues()

    result = deliver_batch_records(records, RecordingDestination(raises=ConnectionError("down")), queues,
                                   RetryPolicy(), current_of({"p1": {"pro": True}}), now=NOW)

    assert result.failures == ["m2", "m3"]
    assert [h for h, _ in queues.retried] == ["rh-m2", "rh-m3"]
    assert all(0 <= delay <= 5 for _, delay in queues.retried)  # attempt 1: jitter within the base
    assert (result.retried, result.delivered, result.last_error) == (2, 1, "destination error: ConnectionError")


def test_per_message_outcomes_are_settled_each() -> None:
    answers = {"p1": Outcome("delivered"), "p2": Outcome("retry", "HTTP 503", 60.0),
               "p3": Outcome("permanent", "HTTP 400: bad list")}
    records = [record(membership(p, "pro", "entered", 1), f"m-{p}") for p in answers]
    queues = FakeQueues()

    result = deliver_batch_records(records, RecordingDestination(lambda b: answers[b["profile_id"]]), queues,
                                   RetryPolicy(), current_of({p: {"pro": True} for p in answers}), now=NOW)

    assert result.failures == ["m-p2"] and queues.retried == [("rh-m-p2", 60.0)]
    assert queues.dead == [("m-p3", "permanent failure: HTTP 400: bad list")]
    assert (result.delivered, result.retried, result.dead_lettered) == (1, 1, 1)


def test_a_retry_past_the_window_is_dead_lettered() -> None:
    records = [record(membership("p1", "pro", "entered", 1), "m1", received=40, first=NOW - timedelta(hours=5))]
    queues = FakeQueues()
    result = deliver_batch_records(records, RecordingDestination(lambda b: Outcome("retry", "HTTP 500")), queues,
                                   RetryPolicy(), current_of({"p1": {"pro": True}}), now=NOW)
    assert result.failures == [] and queues.retried == []
    assert queues.dead == [("m1", "retry window of 4 h exhausted after 40 attempt(s); last: HTTP 500")]


def test_unreadable_messages_are_dead_lettered_and_never_fail_the_batch() -> None:
    records = [record("not json", "bad-json"),
               record("[1, 2]", "not-an-object"),
               record({"kind": "audience_membership", "transition": "entered", "version": 1}, "no-pair"),
               record(membership("p1", "pro", "entered", 1), "good")]
    queues = FakeQueues()
    destination = RecordingDestination()

    result = deliver_batch_records(records, destination, queues, RetryPolicy(),
                                   current_of({"p1": {"pro": True}}), now=NOW)

    assert [m for m, _ in queues.dead] == ["bad-json", "not-an-object", "no-pair"]
    assert all(reason.startswith("unreadable message: ") for _, reason in queues.dead)
    assert [b["profile_id"] for b in destination.sent] == ["p1"]
    assert (result.delivered, result.dead_lettered, result.failures) == (1, 3, [])


# --- property: whatever the order and duplication, the destination ends in the table's state ---

class StatefulDestination:
    """Applies each delivered membership message; answers retry where the script says."""

    def __init__(self) -> None:
        self.state: dict[tuple[str, str], bool] = {}
        self.fail_next: list[bool] = []

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes = []
        for message in messages:
            if self.fail_next and self.fail_next.pop(0):
                outcomes.append(Outcome("retry", "HTTP 503"))
                continue
            body = message.body
            assert body["event"] == ("Audience Entered" if body["transition"] == "entered" else "Audience Exited")
            self.state[(body["profile_id"], body["audience_id"])] = body["transition"] == "entered"
            outcomes.append(Outcome("delivered"))
        return outcomes


PAIRS = [("p1", "pro"), ("p1", "vip"), ("p2", "pro")]
steps = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(PAIRS)),
    # a batch: picks among the queued messages (duplicates allowed: SQS standard delivers at
    # least once), the destination's answers, and whether a delivered message comes again
    st.tuples(st.just("batch"), st.lists(st.integers(0, 50), min_size=1, max_size=10),
              st.lists(st.booleans(), max_size=10), st.booleans()),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(steps=steps, final_order=st.randoms(use_true_random=False))
def test_any_order_and_duplication_of_changes_ends_with_the_destination_in_the_tables_state(
        steps: list[Any], final_order: Any) -> None:
    table: dict[tuple[str, str], bool] = {}
    versions: dict[tuple[str, str], int] = {}
    queued: list[dict[str, Any]] = []  # records not yet deleted
    delivered_once: list[dict[str, Any]] = []
    destination = StatefulDestination()
    serial = iter(range(10_000))

    def current(wanted: Mapping[str, Iterable[str]]) -> dict[str, dict[str, bool]]:
        return {p: {a: table[(p, a)] for a in auds if (p, a) in table} for p, auds in wanted.items()}

    def run(batch: list[dict[str, Any]]) -> None:
        result = deliver_batch_records(batch, destination, FakeQueues(), RetryPolicy(), current, now=NOW)
        failed = set(result.failures)
        for rec in batch:
            if rec["messageId"] not in failed and rec in queued:
                queued.remove(rec)
                delivered_once.append(rec)

    for step in steps:
        if step[0] == "flip":
            pair = step[1]
            table[pair] = not table.get(pair, False)
            versions[pair] = versions.get(pair, 0) + 1
            body = membership(pair[0], pair[1], "entered" if table[pair] else "exited", versions[pair])
            queued.append(record(body, f"m{next(serial)}"))
        else:
            _, picks, answers, redeliver = step
            pool = queued + (delivered_once if redeliver else [])
            if not pool:
                continue
            chosen = list({id(r): r for r in (pool[i % len(pool)] for i in picks)}.values())
            destination.fail_next = list(answers)
            run(chosen)
    # Every message still queued is delivered eventually (in any order, no more failures).
    destination.fail_next = []
    rest = list(queued)
    final_order.shuffle(rest)
    while rest:
        run(rest[:10])
        rest = rest[10:]

    assert destination.state == table


# --- DestinationWorker ---------------------------------------------------------------------

def test_profiles_are_read_once_per_batch_and_each_message_gets_its_view() -> None:
    profiles = FakeProfiles({"p1": profile("p1", "a@example.com"), "p2": profile("p2", "b@example.com", plan="free")})
    destination = RecordingDestination()
    worker = DestinationWorker(config(), destination, FakeQueues(), profiles)

    result = worker.handle([record(membership("p1", "pro", "entered", 1), "m1", group="p1"),
                            record(membership("p2", "pro", "entered", 1), "m2", group="p2"),
                            record(event_message("e1", "p1"), "m3", group="p1")], now=NOW)

    assert profiles.profile_reads == [["p1", "p2"]]
    views = [b["profile"] for b in destination.sent]
    assert views[0] == {"profile_id": "p1", "traits": {"email": "a@example.com", "plan": "pro"},
                        "identifiers": {"email": ["a@example.com"], "user_id": ["user-p1"]},
                        "fields": {"Plan": "pro"}}
    assert views[1]["fields"] == {"Plan": "free"} and views[2] == views[0]
    assert result.delivered == 3
    # per-message destinations are sent one message at a time, in queue order
    assert [len(r) for r in destination.requests] == [1, 1, 1]


def test_an_event_the_router_could_not_place_is_looked_up_at_delivery() -> None:
    profiles = FakeProfiles({"p9": profile("p9", "new@example.com"), "p8": profile("p8", "other@example.com")},
                            people={"u-new": "p9", "u-other": "p8"})
    destination = RecordingDestination()
    worker = DestinationWorker(config(), destination, FakeQueues(), profiles)

    worker.handle([record(event_message("e1", None, user="u-new"), "m1", group="u-new"),
                   record(event_message("e2", None, user="u-new"), "m2", group="u-new"),
                   record(event_message("e3", None, user="u-unknown"), "m3", group="u-unknown"),
                   record(event_message("e4", None, user="u-other"), "m4", group="u-other")], now=NOW)

    assert profiles.person_reads == ["u-new", "u-unknown", "u-other"]  # once per person
    assert [ids for ids in profiles.profile_reads if ids] == [["p8", "p9"]]  # their profiles in one read
    assert [b["profile"] and b["profile"]["profile_id"] for b in destination.sent] == ["p9", "p9", None, "p8"]
    assert person_key({"userId": "u-new"}) == "event-person:u-new:"


def test_a_missing_profile_gives_a_null_view() -> None:
    destination = RecordingDestination()
    DestinationWorker(config(), destination, FakeQueues(), FakeProfiles({})).handle(
        [record(membership("erased", "pro", "exited", 4), "m1", group="erased")], now=NOW)
    assert destination.sent[0]["profile"] is None


def test_entries_need_the_profiles_stored_consent_with_unify_semantics() -> None:
    profiles = FakeProfiles({
        "yes": profile("yes", "y@example.com", {"marketing": True, "ads": True}),
        "no": profile("no", "n@example.com", {"marketing": False}),
        "never": profile("never", "never@example.com"),  # no preferences collected: not consented
    })
    destination = RecordingDestination()
    log = FakeLog()
    worker = DestinationWorker(config(consent_categories=["marketing"]), destination, FakeQueues(), profiles, log)

    result = worker.handle([record(membership(p, "pro", "entered", 1), f"m-{p}", group=p)
                            for p in ("yes", "no", "never")], now=NOW)

    assert [b["profile_id"] for b in destination.sent] == ["yes"]
    assert result.delivered == 3 and result.failures == []  # kept back is done, not retried
    assert worker.refused == {"not consented (refused: marketing)": 1,
                              "no consent preferences: not consented to marketing": 1}
    (_, counts, _), = log.written
    assert (counts.attempts, counts.delivered, counts.not_sent) == (3, 3, 2)


def test_exits_are_sent_whatever_the_consent_with_identifiers_only() -> None:
    profiles = FakeProfiles({"no": profile("no", "n@example.com", {"marketing": False})})
    destination = RecordingDestination()
    worker = DestinationWorker(config(consent_categories=["marketing"]), destination, FakeQueues(), profiles)

    worker.handle([record(membership("no", "pro", "exited", 2), "m1", group="no")], now=NOW)

    assert destination.sent[0]["profile"] == {"profile_id": "no", "traits": {}, "fields": {},
                                              "identifiers": {"email": ["n@example.com"], "user_id": ["user-no"]}}
    assert worker.refused == {}


def test_a_destination_without_consent_categories_gets_every_entry() -> None:
    profiles = FakeProfiles({"never": profile("never", "never@example.com")})
    destination = RecordingDestination()
    DestinationWorker(config(), destination, FakeQueues(), profiles).handle(
        [record(membership("never", "pro", "entered", 1), "m1", group="never")], now=NOW)
    assert len(destination.sent) == 1


def test_membership_property_destinations_get_the_profiles_audiences_on_entries_and_exits() -> None:
    profiles = FakeProfiles({"p1": profile("p1", "a@example.com")},
                            memberships={"p1": {"pro": False, "vip": True, "old": False}})
    destination = RecordingDestination()
    worker = DestinationWorker(config("hubspot"), destination, FakeQueues(), profiles)

    worker.handle([record(membership("p1", "pro", "exited", 3), "m1")], now=NOW)

    (body,) = destination.sent
    # the exit is sent with identifiers only, but keeps the audiences p1 is still in: without
    # them HubSpot's membership property would lose "vip"
    assert body["profile"]["memberships"] == ["vip"]
    assert body["profile"]["traits"] == {} and body["profile"]["fields"] == {}


def test_an_exit_of_a_merged_away_profile_does_not_remove_its_surviving_member() -> None:
    ana = profile("ana", "ana@example.com")
    profiles = FakeProfiles({"old": ana, "ana": ana}, memberships={"ana": {"vip": True, "pro": False}})
    destination = RecordingDestination()
    worker = DestinationWorker(config(), destination, FakeQueues(), profiles)

    # the evaluator recorded the merged-away profile's exits; they resolve to the survivor
    result = worker.handle([record(membership("old", "vip", "exited", 4), "m1", group="old"),
                            record(membership("old", "pro", "exited", 4), "m2", group="old"),
                            record(membership("ana", "vip", "exited", 9), "m3", group="ana")], now=NOW)

    # vip: ana is a member, the old profile's exit would have removed ana's email; pro: ana
    # is not, the exit goes out with ana's identifiers; ana's own exit is hers to send
    assert [(b["profile_id"], b["audience_id"], b["profile"]["profile_id"]) for b in destination.sent] == [
        ("old", "pro", "ana"), ("ana", "vip", "ana")]
    assert worker.refused == {"profile merged into a member of the audience": 1}
    assert result.delivered == 3 and profiles.membership_reads == [{"ana": ["pro", "vip"]}]


def test_a_batch_destination_does_not_remove_a_merged_profiles_surviving_member() -> None:
    ana = profile("ana", "ana@example.com")
    profiles = FakeProfiles({"old": ana}, memberships={"old": {"vip": False}, "ana": {"vip": True}})
    destination = RecordingDestination()
    worker = DestinationWorker(config("s3"), destination, FakeQueues(), profiles)

    result = worker.handle([record(membership("old", "vip", "entered", 2), "m1"),
                            record(membership("old", "vip", "exited", 4), "m2")], now=NOW)

    assert destination.sent == [] and result.delivered == 2


def test_a_batch_destination_takes_one_request_with_current_states() -> None:
    profiles = FakeProfiles({"p1": profile("p1", "a@example.com"), "p2": profile("p2", "b@example.com")},
                            memberships={"p1": {"pro": True}, "p2": {"pro": False}})
    destination = RecordingDestination()
    worker = DestinationWorker(config("s3"), destination, FakeQueues(), profiles)

    result = worker.handle([record(membership("p1", "pro", "exited", 1), "m1"),
                            record(membership("p1", "pro", "entered", 2), "m2"),
                            record(membership("p2", "pro", "entered", 5), "m3")], now=NOW)

    assert len(destination.requests) == 1
    assert [(b["profile_id"], b["transition"]) for b in destination.sent] == [("p1", "entered"), ("p2", "exited")]
    assert profiles.membership_reads == [{"p1": ["pro"], "p2": ["pro"]}]
    # p2's entry became an exit: it is sent with identifiers only
    assert destination.sent[1]["profile"]["traits"] == {}
    assert result.delivered == 3


def test_consent_applies_to_the_state_a_batch_destination_is_sent() -> None:
    profiles = FakeProfiles({"p1": profile("p1", "a@example.com")}, memberships={"p1": {"pro": True}})
    destination = RecordingDestination()
    worker = DestinationWorker(config("s3", consent_categories=["ads"]), destination, FakeQueues(), profiles)

    # an old exit of a profile that is a member again: sent as an entry, which needs consent
    result = worker.handle([record(membership("p1", "pro", "exited", 1), "m1")], now=NOW)

    assert destination.sent == [] and result.delivered == 1
    assert worker.refused == {"no consent preferences: not consented to ads": 1}


def test_consent_kept_back_is_not_counted_when_the_request_fails_and_is_retried() -> None:
    profiles = FakeProfiles({"p1": profile("p1", "a@example.com"), "p2": profile("p2", "b@example.com", {"ads": True})},
                            memberships={"p1": {"pro": True}, "p2": {"pro": True}})
    log = FakeLog()
    worker = DestinationWorker(config("s3", consent_categories=["ads"]), RecordingDestination(raises=TimeoutError()),
                               FakeQueues(), profiles, log)

    result = worker.handle([record(membership("p1", "pro", "entered", 1), "m1"),
                            record(membership("p2", "pro", "entered", 1), "m2")], now=NOW)

    assert result.failures == ["m1", "m2"]
    (_, counts, _), = log.written
    assert (counts.retried, counts.delivered, counts.not_sent) == (2, 0, 0)


def test_the_delivery_log_gets_the_batchs_counts_and_latencies() -> None:
    profiles = FakeProfiles({p: profile(p, f"{p}@example.com") for p in ("p1", "p2", "p3")})
    answers = {"p1": Outcome("retry", "HTTP 503", 30.0), "p2": Outcome("delivered"),
               "p3": Outcome("permanent", "HTTP 404: no such hook")}
    log = FakeLog()
    worker = DestinationWorker(config(), RecordingDestination(lambda b: answers[b["profile_id"]]), FakeQueues(),
                               profiles, log)

    result = worker.handle([record(membership("p1", "pro", "entered", 1), "m1", group="p1"),
                            record(membership("p1", "pro", "exited", 2), "m2", group="p1"),  # held
                            record(membership("p2", "pro", "entered", 1, at="2026-12-06T11:00:00Z"), "m3",
                                   group="p2"),
                            record(event_message("e1", "p2"), "m4", group="p2"),
                            record(membership("p3", "pro", "entered", 1), "m5", group="p3")], now=NOW)

    assert result.failures == ["m1", "m2"]
    ((destination_id, counts, when),) = log.written
    assert destination_id == "dest-webhook" and when == NOW
    assert (counts.attempts, counts.delivered, counts.retried, counts.dead_lettered, counts.held) == (4, 2, 1, 1, 1)
    assert counts.last_error == "HTTP 404: no such hook"
    expected = [0] * len(counts.latencies)
    expected[bucket_of(3600)] += 1  # p2's entry, an hour old
    expected[bucket_of(2)] += 1  # the event, received two seconds ago
    assert counts.latencies == expected


def test_a_failed_log_write_does_not_fail_the_settled_batch() -> None:
    class BrokenLog:
        def record(self, destination_id: str, counts: DeliveryCounts, now: datetime | None = None) -> None:
            raise ConnectionError("dynamodb unreachable")

    destination = RecordingDestination()
    worker = DestinationWorker(config(), destination, FakeQueues(), FakeProfiles({}), BrokenLog())

    result = worker.handle([record(event_message("e1", None), "m1", group="u1")], now=NOW)

    # raising would make Lambda deliver the whole batch again
    assert result.delivered == 1 and result.failures == [] and len(destination.sent) == 1


def test_without_a_log_the_worker_still_delivers() -> None:
    destination = RecordingDestination()
    result = DestinationWorker(config(), destination, FakeQueues(), FakeProfiles({})).handle(
        [record(event_message("e1", None), "m1", group="u1")], now=NOW)
    assert result.delivered == 1


# --- enrichment ----------------------------------------------------------------------------

def test_a_profile_view_holds_traits_identifiers_by_type_and_mapped_fields() -> None:
    person = UserProfile("p1", AT, AT, (Identifier("email", "b@example.com"), Identifier("email", "a@example.com"),
                                        Identifier("phone", "+33612345678")), ("p0",),
                         ProfileState(traits={"plan": TraitValue("pro", AT, "m"),
                                              "address": TraitValue({"city": "Lyon"}, AT, "m")}))
    mapped = config(field_mapping={"address.city": "City", "plan": "Plan", "missing": "Nope"})

    view = profile_view(person, mapped, memberships=["vip", "pro"])

    assert view == {"profile_id": "p1", "traits": {"address": {"city": "Lyon"}, "plan": "pro"},
                    "identifiers": {"email": ["a@example.com", "b@example.com"], "phone": ["+33612345678"]},
                    "fields": {"City": "Lyon", "Plan": "pro"}, "memberships": ["pro", "vip"]}
    assert "memberships" not in (profile_view(person, mapped) or {})
    assert profile_view(None, mapped) is None


def test_with_profile_sets_the_view_and_keeps_the_message_id() -> None:
    message = OutboundMessage("dedup-1", {"kind": "event", "profile": "stale"})
    enriched = with_profile(message, {"profile_id": "p1"})
    assert enriched == OutboundMessage("dedup-1", {"kind": "event", "profile": {"profile_id": "p1"}})
    assert message.body["profile"] == "stale"
