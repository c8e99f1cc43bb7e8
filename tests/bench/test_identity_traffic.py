"""bench.identity_traffic: deterministic, shaped like the reference mix, valid for the collector."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

import pytest

from bench.identity_traffic import REFERENCE_MIX, IdentityMix, IdentityTrafficGenerator, TrafficStats
from bench.segment_traffic import SdkRequest
from cdp.identity.config import IdentityConfig
from cdp.identity.identifiers import extract_identifiers
from cdp.ingest import StreamRecord, collect, validate_event
from cdp.segment import RejectedEvent
from cdp.sources import Source

KEY = "bench-write-key"
EVENTS = 20_000
SOURCE = Source(source_id="src_bench", name="bench", enabled=True, key_hash="h")


@pytest.fixture(scope="module")
def traffic() -> tuple[list[dict[str, Any]], TrafficStats, list[SdkRequest]]:
    generator = IdentityTrafficGenerator(KEY, seed=11)
    events = generator.events(EVENTS)
    return events, generator.stats, list(generator.requests(events))


def wire(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as the collector receives them (JSON)."""
    return [json.loads(json.dumps(e)) for e in events]


def test_same_seed_same_requests_other_seed_other_requests():
    def bodies(seed: int) -> list[str]:
        generator = IdentityTrafficGenerator(KEY, seed=seed)
        return [r.body for r in generator.requests(generator.events(2_000))]

    assert bodies(3) == bodies(3)
    assert bodies(3) != bodies(4)


def test_exactly_the_events_asked_for_in_sdk_batches(traffic):
    events, _, requests = traffic
    assert len(events) == EVENTS
    assert [r.events for r in requests] == [100] * (EVENTS // 100)
    assert len({e["messageId"] for e in events}) == EVENTS


def test_people_shares_and_shape_match_the_reference_mix(traffic):
    _, stats, _ = traffic
    mix = REFERENCE_MIX
    assert len(stats.people) > 1_000
    assert stats.population_share("anonymous") == pytest.approx(mix.anonymous_share, abs=0.03)
    assert stats.population_share("lead") == pytest.approx(mix.lead_share, abs=0.02)
    assert stats.population_share("user") == pytest.approx(1 - mix.anonymous_share - mix.lead_share, abs=0.03)
    # People with more sessions are more often in the window: users more than visitors.
    assert stats.share("user") > stats.population_share("user")
    assert stats.share("anonymous") > 0.5
    # Users: 1 browser + 40 % a second one + 35 % the app, less those outside the window.
    assert 1.3 < stats.devices_per_person("user") < 1.75
    assert stats.devices_per_person("anonymous") == 1
    session_events = stats.calls["page"] + stats.calls["track"] + stats.calls["screen"]
    planned = stats.planned_session_events / stats.planned_sessions
    assert planned == pytest.approx(mix.events_per_session, abs=0.3)
    assert planned - 1 < session_events / len(stats.sessions) < planned  # sessions cut by the window's edges
    assert len(stats.identifying) / len(stats.people) == pytest.approx(0.30, abs=0.05)
    assert len(stats.b2b_users) / len(stats.accounts) > 2  # accounts have several members
    assert stats.calls["alias"] > 0 and stats.shared_devices
    assert stats.window_s == EVENTS / mix.rate_per_s


def test_stream_is_in_time_order_and_each_batch_is_sent_after_its_events(traffic):
    events, _, requests = traffic
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in events]
    assert stamps == sorted(stamps)
    span = (stamps[-1] - stamps[0]).total_seconds()
    assert span == pytest.approx(EVENTS / REFERENCE_MIX.rate_per_s, rel=0.1)
    for request in requests:
        body = json.loads(request.body)
        last = max(datetime.fromisoformat(e["timestamp"]) for e in body["batch"])
        assert datetime.fromisoformat(body["sentAt"]) > last


def test_people_are_interleaved_not_sent_one_after_the_other(traffic):
    events, _, _ = traffic
    first_batch_devices = {e.get("anonymousId") for e in events[:100]}
    assert len(first_batch_devices) > 30


def test_a_device_sends_its_user_id_only_after_logging_in(traffic):
    """Sign-up: anonymous events first, then identify, then the userId on every event
    of that device; a second user on the same browser is the shared-device case."""
    events, stats, _ = traffic
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.get("anonymousId"):
            by_device[event["anonymousId"]].append(event)
    signed_up_here = 0
    users_per_device: dict[str, set[str]] = {}
    for device, device_events in by_device.items():
        kinds_before_user = []
        for event in device_events:
            if event.get("userId"):
                break
            kinds_before_user.append(event["type"])
        first_with_user = len(kinds_before_user)
        users_per_device[device] = {e["userId"] for e in device_events if e.get("userId")}
        if 0 < first_with_user < len(device_events) and len(users_per_device[device]) == 1:
            assert device_events[first_with_user]["type"] in ("identify", "alias")
            signed_up_here += 1
    assert signed_up_here > 100
    shared = [d for d, users in users_per_device.items() if len(users) > 1]
    assert 0 < len(shared) <= len(stats.shared_devices)


def test_mobile_events_carry_device_ids_and_traits_once_logged_in(traffic):
    events, _, _ = traffic
    screens = [e for e in events if e["type"] == "screen"]
    assert screens and all(e["context"]["device"]["id"] for e in screens)
    with_ad_id = sum(1 for e in screens if "advertisingId" in e["context"]["device"])
    assert 0.2 < with_ad_id / len(screens) < 0.8
    logged_in = [e for e in screens if e.get("userId")]
    assert logged_in and all("@" in e["context"]["traits"]["email"] for e in logged_in)


def test_leads_identify_with_an_email_and_no_user_id(traffic):
    events, _, _ = traffic
    leads = [e for e in events if e["type"] == "identify" and not e.get("userId")]
    assert leads and all(e["anonymousId"] and "@" in e["traits"]["email"] for e in leads)


def test_every_event_is_valid_and_has_identifiers(traffic):
    events, _, _ = traffic
    config = IdentityConfig()
    types: set[str] = set()
    for event in wire(events):
        checked = validate_event(event, None)
        assert not isinstance(checked, RejectedEvent), checked
        extracted = extract_identifiers(event, config)
        assert not extracted.refused, extracted.refused
        assert extracted.identifiers or extracted.previous_id
        types |= {i.type for i in extracted.identifiers}
    assert {"anonymous_id", "user_id", "email", "device_id", "ios.idfa", "android.idfa"} <= types


def test_the_collector_accepts_every_request(traffic):
    _, _, requests = traffic

    class Stream:
        records: list[StreamRecord] = []

        def put_records(self, records: list[StreamRecord]) -> None:
            self.records.extend(records)

    stream = Stream()
    for request in requests[:50]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        result = collect("batch", request.body.encode(), headers, lambda key: SOURCE if key == KEY else None, stream)
        assert result.accepted == request.events and not result.rejected
    assert all(json.loads(r.data)["kind"] == "event" for r in stream.records)


def test_mix_is_a_parameter():
    generator = IdentityTrafficGenerator(KEY, seed=1, mix=IdentityMix(anonymous_share=0.2, lead_share=0.0))
    generator.events(5_000)
    assert generator.stats.population_share("user") == pytest.approx(0.8, abs=0.05)
    assert generator.stats.population_share("lead") == 0
    assert any("20% anonymous only" in line for line in generator.mix.describe())
