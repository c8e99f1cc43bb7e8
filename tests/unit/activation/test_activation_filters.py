"""The router's event filters (cdp.activation.filters), run through the local emulation of
Lambda's filtering (cdp.local.event_filtering) against records shaped as Lambda delivers
them: DynamoDB stream records of the memberships table, and Kinesis records (whose ``data``
Lambda filters on JSON-decoded). No record some destination wants may be filtered out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.activation.destinations import DestinationConfig
from cdp.activation.filters import MAX_FILTERS, MAX_PATTERN_CHARS, audience_filters, trigger_filters
from cdp.activation.router import membership_change, route_change, route_event
from cdp.local.event_filtering import FilterCriteria


def destination(id_: str, **overrides: Any) -> DestinationConfig:
    data: dict[str, Any] = {"id": id_, "name": id_, "type": "webhook",
                            "settings": {"url": "https://example.com/cdp", "secret_name": "cdp/hooks"}}
    data.update(overrides)
    return DestinationConfig.model_validate(data)


def membership_image(audience: str, member: bool, version: int = 3, profile: str = "p1") -> dict[str, Any]:
    image: dict[str, Any] = {"profile_id": {"S": profile}, "audience_id": {"S": audience},
                             "member": {"BOOL": member}, "profile_version": {"N": str(version)},
                             "changed_version": {"N": str(version)}, "updated_at": {"S": "2026-12-01T10:00:00.000Z"}}
    if member:
        image["member_of"] = {"S": audience}
        image["entered_at"] = {"S": "2026-12-01T10:00:00.000Z"}
    else:
        image["exited_at"] = {"S": "2026-12-01T10:00:00.000Z"}
    return image


def stream_record(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    """A memberships-table stream record as Lambda delivers (and filters) it."""
    keys_of = new or old or {}
    body: dict[str, Any] = {"ApproximateCreationDateTime": 1764583200,
                            "Keys": {"profile_id": keys_of["profile_id"], "audience_id": keys_of["audience_id"]},
                            "SequenceNumber": "1000000000000000000001", "SizeBytes": 200,
                            "StreamViewType": "NEW_AND_OLD_IMAGES"}
    if old is not None:
        body["OldImage"] = old
    if new is not None:
        body["NewImage"] = new
    return {"eventID": "e1", "eventName": "INSERT" if old is None else "MODIFY" if new is not None else "REMOVE",
            "eventVersion": "1.1", "eventSource": "aws:dynamodb", "awsRegion": "us-east-1", "dynamodb": body,
            "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/cdp-memberships/stream/2026-12-01T00:00"}


def kinesis_filter_input(data: Any) -> dict[str, Any]:
    """What Lambda's filter sees of a Kinesis record: the metadata, and ``data`` decoded
    from base64 and parsed as JSON."""
    return {"kinesisSchemaVersion": "1.0", "partitionKey": "u1", "sequenceNumber": "4959", "data": data,
            "approximateArrivalTimestamp": 1764583200.0}


def envelope(event: dict[str, Any], kind: str = "event") -> dict[str, Any]:
    return {"v": 1, "kind": kind, "source_id": "src_web", "event": event}


def criteria(patterns: list[str]) -> FilterCriteria:
    return FilterCriteria.from_patterns(patterns)  # raises if Lambda (or the emulation) would refuse one


# --- memberships stream ------------------------------------------------------------------

AUDIENCE_DESTINATIONS = (destination("a", audiences=["vip", "churn-risk"]), destination("b", audiences=["vip"]),
                         destination("off", audiences=["paused"], enabled=False),
                         destination("t", triggers=[{"name": "Any", "event": "A"}]))


def test_the_audience_filter_is_one_valid_pattern_of_the_enabled_destinations_audiences() -> None:
    patterns = audience_filters(AUDIENCE_DESTINATIONS)
    assert [json.loads(p) for p in patterns] == [
        {"dynamodb": {"NewImage": {"audience_id": {"S": ["churn-risk", "vip"]}}}}]
    criteria(patterns)


@pytest.mark.parametrize(("old", "new", "passes"), [
    (None, membership_image("vip", True), True),  # entry (insert)
    (membership_image("churn-risk", True), membership_image("churn-risk", False, 4), True),  # exit
    (membership_image("vip", True), membership_image("vip", True, 4), True),  # a rewrite: passes, routed as nothing
    (None, membership_image("paused", True), False),  # only a disabled destination lists it
    (None, membership_image("someone-elses", True), False),
    (membership_image("vip", True), None, False),  # removed (erasure): no new image
])
def test_stream_records_pass_only_for_listed_audiences(old: Any, new: Any, passes: bool) -> None:
    assert criteria(audience_filters(AUDIENCE_DESTINATIONS)).matches(stream_record(old, new)) is passes


def test_no_audiences_means_no_filter() -> None:
    assert audience_filters((destination("t", triggers=[{"name": "Any", "event": "A"}]),)) == []
    assert audience_filters((destination("off", audiences=["x"], enabled=False),)) == []


def test_many_audiences_are_split_over_patterns_within_lambdas_limits() -> None:
    audiences = [f"audience-number-{n:04d}-with-a-long-descriptive-slug" for n in range(300)]
    destinations = tuple(destination(f"d{n}", audiences=audiences[n * 100:(n + 1) * 100]) for n in range(3))

    patterns = audience_filters(destinations)

    assert 1 < len(patterns) <= MAX_FILTERS and all(len(p) <= MAX_PATTERN_CHARS for p in patterns)
    found = criteria(patterns)
    assert all(found.matches(stream_record(None, membership_image(a, True))) for a in audiences)
    assert not found.matches(stream_record(None, membership_image("audience-number-9999", True)))


def test_too_many_audiences_for_the_filters_means_no_filter() -> None:
    audiences = [f"audience-{n:04d}-".ljust(63, "x") for n in range(1000)]  # longest slugs, most audiences
    assert audience_filters((destination("d", audiences=audiences),)) == []


@settings(max_examples=200, deadline=None)
@given(audience=st.sampled_from(["vip", "churn-risk", "paused", "other"]), was=st.booleans(), now=st.booleans(),
       created=st.booleans())
def test_no_change_a_destination_wants_is_filtered_out(audience: str, was: bool, now: bool, created: bool) -> None:
    old = None if created else membership_image(audience, was, 2)
    new = membership_image(audience, now, 3)
    change = membership_change(old, new)
    wanted = change is not None and bool(route_change(change, AUDIENCE_DESTINATIONS).messages)
    if wanted:
        assert criteria(audience_filters(AUDIENCE_DESTINATIONS)).matches(stream_record(old, new))


# --- event stream ------------------------------------------------------------------------

TRIGGER_DESTINATIONS = (
    destination("orders", triggers=[{"name": "Bought", "event": "Order Completed"},
                                    {"name": "Refunded", "event": "Order Refunded",
                                     "where": [{"path": "properties.total", "op": "exists"}]}]),
    destination("pages", triggers=[{"name": "Pricing", "event_type": "page", "event": "Pricing",
                                    "audience": "vip"}]),
    destination("screens", triggers=[{"name": "Any screen", "event_type": "screen"},
                                     {"name": "Home", "event_type": "screen", "event": "Home"}]),
    destination("ids", triggers=[{"name": "Identified", "event_type": "identify"}]),
    destination("off", enabled=False, triggers=[{"name": "Disabled", "event": "Product Viewed"}]),
)


def test_trigger_filters_are_valid_patterns_one_per_event_type() -> None:
    patterns = [json.loads(p) for p in trigger_filters(TRIGGER_DESTINATIONS)]
    criteria(trigger_filters(TRIGGER_DESTINATIONS))
    assert patterns == [
        {"data": {"kind": ["event"], "event": {"type": ["identify"]}}},
        {"data": {"kind": ["event"], "event": {"type": ["page"], "name": ["Pricing"]}}},
        {"data": {"kind": ["event"], "event": {"type": ["screen"]}}},  # one trigger takes every screen
        {"data": {"kind": ["event"], "event": {"type": ["track"], "event": ["Order Completed", "Order Refunded"]}}},
    ]


@pytest.mark.parametrize(("data", "passes"), [
    (envelope({"type": "track", "event": "Order Completed", "userId": "u1"}), True),
    (envelope({"type": "track", "event": "Order Refunded", "userId": "u1"}), True),
    (envelope({"type": "track", "event": "Product Viewed", "userId": "u1"}), False),  # disabled destination's
    (envelope({"type": "track", "name": "Order Completed", "userId": "u1"}), False),  # track names are "event"
    (envelope({"type": "page", "name": "Pricing", "userId": "u1"}), True),
    (envelope({"type": "page", "name": "Home", "userId": "u1"}), False),
    (envelope({"type": "screen", "name": "Anything", "userId": "u1"}), True),
    (envelope({"type": "identify", "userId": "u1", "traits": {}}), True),
    (envelope({"type": "group", "groupId": "g1", "userId": "u1"}), False),
    (envelope({"type": "track", "event": "Order Completed"}, kind="rejected"), False),
    ("not an object", False),
])
def test_kinesis_records_pass_only_for_trigger_events(data: Any, passes: bool) -> None:
    assert criteria(trigger_filters(TRIGGER_DESTINATIONS)).matches(kinesis_filter_input(data)) is passes


def test_no_enabled_trigger_means_no_filter_patterns() -> None:
    assert trigger_filters((destination("off", enabled=False, triggers=[{"name": "X", "event": "A"}]),)) == []


def test_more_event_names_than_a_pattern_holds_fall_back_to_every_event() -> None:
    many = tuple(destination(f"d{d}", triggers=[{"name": f"T{n}", "event": f"A rather long event name {d}-{n:03d}"}
                                                for n in range(50)]) for d in range(3))

    patterns = trigger_filters(many)

    assert [json.loads(p) for p in patterns] == [{"data": {"kind": ["event"]}}]
    assert criteria(patterns).matches(kinesis_filter_input(envelope({"type": "track", "event": "x"})))


names = st.sampled_from(["Order Completed", "Order Refunded", "Product Viewed", "Pricing", "Home", "Other"])


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["track", "page", "screen", "identify", "group"]), name=names,
       total=st.one_of(st.none(), st.integers(0, 100)))
def test_no_event_a_trigger_wants_is_filtered_out(kind: str, name: str, total: int | None) -> None:
    event: dict[str, Any] = {"type": kind, "userId": "u1", "messageId": "m1", "properties": {}}
    if kind == "track":
        event["event"] = name
    elif kind in ("page", "screen"):
        event["name"] = name
    if total is not None:
        event["properties"]["total"] = total
    routed = route_event(event, TRIGGER_DESTINATIONS, {"vip"})
    # (a disabled destination's skip is only a counter: its events may be filtered out)
    if routed.messages or any(s.reason != "destination is disabled" for s in routed.skipped):
        assert criteria(trigger_filters(TRIGGER_DESTINATIONS)).matches(kinesis_filter_input(envelope(event)))
