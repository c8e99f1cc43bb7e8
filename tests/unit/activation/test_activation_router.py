"""The router's decisions (cdp.activation.router) and the destination configuration model
(cdp.activation.destinations)."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cdp.activation.consent import ConsentPolicy
from cdp.activation.destinations import (
    BATCH_LIMITS,
    DestinationConfig,
    looks_like_secret,
    parse_destinations,
    problems,
)
from cdp.activation.router import (
    ConsentContext,
    MembershipChange,
    event_deduplication_id,
    integration_enabled,
    membership_change,
    message_group_id,
    route_change,
    route_event,
)
from cdp.segmentation.audience_events import audience_message_id

SQS_ID = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}$")


def webhook(**overrides):
    data = {"id": "hooks", "name": "Our webhook", "type": "webhook",
            "settings": {"url": "https://example.com/cdp", "secret_name": "cdp/webhooks/hooks"},
            "audiences": ["high-intent"]}
    data.update(overrides)
    return DestinationConfig.model_validate(data)


def slack(**overrides):
    data = {"id": "alerts", "name": "Sales alerts", "type": "slack",
            "settings": {"webhook_url_secret_name": "/cdp/slack/sales"},
            "triggers": [{"name": "Pricing viewed", "event_type": "page", "event": "Pricing",
                          "audience": "high-intent"}]}
    data.update(overrides)
    return DestinationConfig.model_validate(data)


def item(member, *, changed=3, version=3, next_check=None, entered="2026-12-01T10:00:00.000Z",
         exited=None, profile="prof_1", audience="high-intent"):
    image = {"profile_id": {"S": profile}, "audience_id": {"S": audience}, "member": {"BOOL": member},
             "profile_version": {"N": str(version)}, "changed_version": {"N": str(changed)},
             "updated_at": {"S": "2026-12-01T10:00:00.000Z"}}
    if entered:
        image["entered_at"] = {"S": entered}
    if exited:
        image["exited_at"] = {"S": exited}
    if member:
        image["member_of"] = {"S": audience}
    if next_check:
        image["next_check"] = {"S": next_check}
    return image


def entry(profile="prof_1", audience="high-intent", version=3):
    return MembershipChange(profile, audience, "entered", version, "2026-12-01T10:00:00.000Z")


def pricing_view(**overrides):
    event = {"type": "page", "name": "Pricing", "userId": "u1", "messageId": "m-1",
             "properties": {"path": "/pricing", "plan": "pro", "tags": ["b2b", "eu"]},
             "timestamp": "2026-12-01T10:00:00.000Z"}
    event.update(overrides)
    return event


# --- membership changes from stream images ---------------------------------------------

def test_insert_of_a_member_is_an_entry_with_its_changed_version():
    change = membership_change(None, item(True, changed=7, version=7))
    assert change == MembershipChange("prof_1", "high-intent", "entered", 7, "2026-12-01T10:00:00.000Z")
    assert change.message_id == audience_message_id("high-intent", "prof_1", "entered", 7)


def test_non_member_becoming_member_is_an_entry():
    change = membership_change(item(False, changed=2, version=2, exited="2026-11-01T00:00:00.000Z"),
                               item(True, changed=5, version=5))
    assert change is not None and change.transition == "entered" and change.version == 5


def test_member_becoming_non_member_is_an_exit_at_its_exit_time():
    change = membership_change(item(True, changed=5, version=5),
                               item(False, changed=9, version=9, exited="2026-12-02T08:00:00.000Z"))
    assert change == MembershipChange("prof_1", "high-intent", "exited", 9, "2026-12-02T08:00:00.000Z")


def test_next_check_only_write_is_no_change():
    old = item(True, changed=5, version=5, next_check="2026-12-01T11#03")
    new = item(True, changed=5, version=6, next_check="2026-12-01T12#03")
    assert membership_change(old, new) is None
    assert route_change_of(old, new) == []


def route_change_of(old, new):
    change = membership_change(old, new)
    return [] if change is None else route_change(change, [webhook()]).messages


def test_rewrite_of_a_non_member_and_removal_are_no_change():
    assert membership_change(None, item(False, changed=0, version=4, entered=None)) is None
    assert membership_change(item(False, version=4), item(False, version=5)) is None
    assert membership_change(item(True), None) is None


def test_deserialised_images_are_read_too():
    new = {"profile_id": "prof_1", "audience_id": "a", "member": True, "changed_version": Decimal(4),
           "profile_version": Decimal(4), "entered_at": "2026-12-01T10:00:00.000Z"}
    assert membership_change({**new, "member": False}, new) == MembershipChange(
        "prof_1", "a", "entered", 4, "2026-12-01T10:00:00.000Z")


def test_redelivered_stream_record_gives_the_same_message():
    old, new = item(False, version=2, changed=2), item(True, version=3, changed=3)
    first = route_change(membership_change(old, new), [webhook()]).messages
    again = route_change(membership_change(old, new), [webhook()]).messages
    assert first == again and len(first) == 1
    assert first[0].deduplication_id == audience_message_id("high-intent", "prof_1", "entered", 3)
    assert first[0].message_group_id == "prof_1"


# --- routing changes --------------------------------------------------------------------

def test_change_goes_to_destinations_listing_the_audience_only():
    other = webhook(id="other", audiences=["churn-risk"])
    routing = route_change(entry(), [webhook(), other, slack()])
    assert [m.destination_id for m in routing.messages] == ["hooks"]
    assert routing.skipped == []  # destinations that do not want it are not mentioned


def test_empty_audience_list_receives_no_changes():
    assert route_change(entry(), [webhook(audiences=[])]).messages == []


def test_disabled_destination_is_skipped_with_reason():
    routing = route_change(entry(), [webhook(enabled=False)])
    assert routing.messages == []
    assert [(s.destination_id, s.reason) for s in routing.skipped] == [("hooks", "destination is disabled")]


def test_change_body_is_json_and_carries_no_settings():
    message = route_change(entry(), [webhook()]).messages[0]
    text = json.dumps(message.body)
    assert message.body["transition"] == "entered" and message.body["event"] == "Audience Entered"
    assert message.body["message_id"] == message.deduplication_id
    assert "example.com" not in text and "cdp/webhooks" not in text


def test_entry_and_exit_of_one_profile_share_a_group_and_differ_in_dedup_id():
    exit_ = MembershipChange("prof_1", "high-intent", "exited", 4, "2026-12-02T00:00:00.000Z")
    enter, leave = route_change(entry(), [webhook()]).messages[0], route_change(exit_, [webhook()]).messages[0]
    assert enter.message_group_id == leave.message_group_id
    assert enter.deduplication_id != leave.deduplication_id


def test_consent_refusal_skips_with_reason_naming_categories_only():
    dest = webhook(consent_categories=["Advertising"])
    consent = ConsentContext(preferences={"Advertising": False}, keys=("prof_1",))
    routing = route_change(entry(), [dest], consent)
    assert routing.messages == []
    assert routing.skipped[0].reason == "not consented (refused: Advertising)"
    assert "prof_1" not in routing.skipped[0].reason


def test_consent_given_delivers_and_unify_policy_refuses_missing_preferences():
    dest = webhook(consent_categories=["Advertising"])
    assert len(route_change(entry(), [dest], ConsentContext(preferences={"Advertising": True})).messages) == 1
    unify = ConsentContext(preferences=None, policy=ConsentPolicy.UNIFY)
    assert route_change(entry(), [dest], unify).messages == []
    # none given: no stored preferences under Connections semantics: not enforced
    assert len(route_change(entry(), [dest]).messages) == 1


def test_suppressed_profile_is_skipped():
    consent = ConsentContext(keys=("prof_1",), suppression_set={"prof_1"})
    routing = route_change(entry(), [webhook()], consent)
    assert routing.messages == [] and routing.skipped[0].reason == "profile is suppressed"


# --- ids within SQS limits ------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(profile_id=st.text(min_size=1, max_size=600), message_id=st.text(min_size=1, max_size=600))
def test_ids_fit_sqs_for_any_profile_and_message_id(profile_id, message_id):
    change = MembershipChange(profile_id, "high-intent", "entered", 3, None)
    routed = route_change(change, [webhook()]).messages[0]
    assert SQS_ID.match(routed.message_group_id) and SQS_ID.match(routed.deduplication_id)
    event = pricing_view(messageId=message_id)
    triggered = route_event(event, [slack()], {"high-intent"}, profile_id=profile_id).messages[0]
    assert SQS_ID.match(triggered.message_group_id) and SQS_ID.match(triggered.deduplication_id)
    # stable: the same input gives the same ids
    assert route_event(event, [slack()], {"high-intent"}, profile_id=profile_id).messages[0] == triggered


def test_long_profile_id_is_hashed_and_short_one_kept():
    long_id = "p" * 129
    assert message_group_id("prof_1") == "prof_1"
    assert message_group_id("p" * 128) == "p" * 128
    hashed = message_group_id(long_id)
    assert hashed.startswith("h:") and len(hashed) <= 128 and hashed != message_group_id("p" * 130)


def test_event_dedup_id_is_destination_and_message_id():
    assert event_deduplication_id("alerts", "m-1") == "alerts:m-1"
    assert event_deduplication_id("alerts", "m-1") != event_deduplication_id("hooks", "m-1")
    assert len(event_deduplication_id("alerts", "x" * 200)) <= 128


# --- routing events: triggers ------------------------------------------------------------

def test_trigger_fires_for_member_and_not_for_non_member():
    routing = route_event(pricing_view(), [slack()], {"high-intent"}, profile_id="prof_1")
    assert len(routing.messages) == 1
    message = routing.messages[0]
    assert message.body["triggers"] == ["Pricing viewed"] and message.message_group_id == "prof_1"
    assert message.deduplication_id == "alerts:m-1"
    assert route_event(pricing_view(), [slack()], set(), profile_id="prof_1").messages == []


def test_trigger_selects_type_and_name():
    assert route_event(pricing_view(name="Home"), [slack()], {"high-intent"}).messages == []
    as_track = {"type": "track", "event": "Pricing", "userId": "u1", "messageId": "m-2"}
    assert route_event(as_track, [slack()], {"high-intent"}).messages == []


@pytest.mark.parametrize(("where", "fires"), [
    ({"path": "properties.plan", "op": "equals", "value": "pro"}, True),
    ({"path": "properties.plan", "op": "equals", "value": "free"}, False),
    ({"path": "properties.plan", "op": "not_equals", "value": "free"}, True),
    ({"path": "properties.plan", "op": "not_equals", "value": "pro"}, False),
    ({"path": "properties.path", "op": "exists"}, True),
    ({"path": "properties.coupon", "op": "exists"}, False),
    ({"path": "properties.path", "op": "contains", "value": "pric"}, True),
    ({"path": "properties.tags", "op": "contains", "value": "eu"}, True),
    ({"path": "properties.tags", "op": "contains", "value": "us"}, False),
    ({"path": "properties.plan", "op": "in", "values": ["pro", "enterprise"]}, True),
    ({"path": "properties.plan", "op": "in", "values": ["free"]}, False),
])
def test_trigger_property_filters(where, fires):
    dest = slack(triggers=[{"name": "t", "event_type": "page", "event": "Pricing", "where": [where]}])
    assert bool(route_event(pricing_view(), [dest], set()).messages) is fires


def test_identify_trigger_on_traits():
    dest = slack(triggers=[{"name": "signup", "event_type": "identify",
                            "where": [{"path": "traits.plan", "op": "equals", "value": "pro"}]}])
    event = {"type": "identify", "userId": "u1", "messageId": "m-3", "traits": {"plan": "pro"}}
    assert len(route_event(event, [dest], set()).messages) == 1


def test_disabled_destination_with_matching_trigger_is_skipped():
    routing = route_event(pricing_view(), [slack(enabled=False)], {"high-intent"})
    assert routing.messages == [] and routing.skipped[0].reason == "destination is disabled"


def test_event_body_drops_integrations_and_write_key():
    event = pricing_view(writeKey="wk_abc", integrations={"Slack": {"channel": "x"}})
    body = route_event(event, [slack()], {"high-intent"}).messages[0].body
    assert "writeKey" not in body["event"] and "integrations" not in body["event"]
    json.dumps(body)


def test_event_consent_defaults_to_the_events_own_preferences():
    dest = slack(consent_categories=["Marketing"])
    refused = pricing_view(context={"consent": {"categoryPreferences": {"Marketing": False}}})
    routing = route_event(refused, [dest], {"high-intent"})
    assert routing.messages == [] and "Marketing" in routing.skipped[0].reason
    given_ = pricing_view(context={"consent": {"categoryPreferences": {"Marketing": True}}})
    assert len(route_event(given_, [dest], {"high-intent"}).messages) == 1
    # the caller's stored preferences win over the event's
    stored = ConsentContext(preferences={"Marketing": False})
    assert route_event(given_, [dest], {"high-intent"}, consent=stored).messages == []


def test_event_without_message_id_is_skipped():
    event = pricing_view()
    del event["messageId"]
    routing = route_event(event, [slack()], {"high-intent"})
    assert routing.messages == [] and routing.skipped[0].reason == "event has no messageId or no person"


# --- the integrations object ---------------------------------------------------------

@pytest.mark.parametrize(("integrations", "enabled"), [
    (None, True),
    ({}, True),
    ({"All": True}, True),
    ({"All": False}, False),
    ({"All": False, "Slack": True}, True),
    ({"All": False, "Slack": {"channel": "#sales"}}, True),  # options object: enabled
    ({"All": True, "Slack": False}, False),
    ({"Slack": False}, False),
    ({"All": False, "slack": True}, False),  # case sensitive
    ({"All": False, "Slack": None}, False),  # null counts as absent
    ({"Webhooks": False}, True),  # another destination's flag
])
def test_integrations_object(integrations, enabled):
    event = pricing_view() if integrations is None else pricing_view(integrations=integrations)
    routing = route_event(event, [slack()], {"high-intent"})
    assert bool(routing.messages) is enabled
    assert integration_enabled(integrations, "Slack") is enabled
    if not enabled:
        assert routing.skipped[0].reason == "integrations object disables 'Slack'"


def test_integration_name_override_and_defaults():
    assert webhook().integration_key == "Webhooks"
    assert slack().integration_key == "Slack"
    custom = slack(integration_name="Sales Slack")
    event = pricing_view(integrations={"All": False, "Sales Slack": True})
    assert len(route_event(event, [custom], {"high-intent"}).messages) == 1
    assert route_event(event, [slack()], {"high-intent"}).messages == []


def test_integrations_object_does_not_apply_to_changes():
    # an audience change is not a source's event; only the destination's audiences decide
    assert len(route_change(entry(), [webhook(integration_name="X")]).messages) == 1


# --- configuration validation -------------------------------------------------------------

def fields_of(exc_info):
    return {p["field"] for p in problems(exc_info.value)}


def test_http_url_refused_except_localhost():
    with pytest.raises(ValidationError) as exc_info:
        webhook(settings={"url": "http://example.com/cdp"})
    assert "settings.webhook.url" in fields_of(exc_info)
    assert "https" in problems(exc_info.value)[0]["reason"]
    assert webhook(settings={"url": "http://localhost:8080/hook"}).settings.url.startswith("http://localhost")
    assert webhook(settings={"url": "http://127.0.0.1/hook"})
    with pytest.raises(ValidationError):
        webhook(settings={"url": "ftp://example.com/x"})


@pytest.mark.parametrize("settings_", [
    {"url": "https://example.com/cdp", "secret_name": "whsec_3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a"},
    {"url": "https://example.com/cdp", "headers": {"Authorization": "Bearer abc"}},
    {"url": "https://example.com/cdp", "headers": {"X-Team": "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"}},
    {"url": "https://example.com/cdp?token=abc"},
    {"url": "https://user:pw@example.com/cdp"},
    {"url": "https://hooks.slack.com/services/T000/B000/XXXX"},
])
def test_secret_values_in_webhook_settings_are_refused(settings_):
    with pytest.raises(ValidationError) as exc_info:
        webhook(settings=settings_)
    text = json.dumps(problems(exc_info.value))
    assert any(f.startswith("settings.webhook") for f in fields_of(exc_info))
    assert "3f9a8b7c" not in text and "Bearer abc" not in text  # the value is never echoed


def test_secret_token_as_a_secret_name_is_refused():
    with pytest.raises(ValidationError) as exc_info:
        DestinationConfig.model_validate({"id": "crm", "name": "CRM", "type": "hubspot",
                                          "settings": {"access_token_secret_name": "pat-na1-11111111-2222"}})
    assert "settings.hubspot.access_token_secret_name" in fields_of(exc_info)


def test_secret_names_and_arns_are_accepted():
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cdp/hubspot-AbCdEf"
    config = DestinationConfig.model_validate({"id": "crm", "name": "CRM", "type": "hubspot",
                                               "settings": {"access_token_secret_name": arn}})
    assert config.effective_batch_size == 100
    assert not looks_like_secret("/cdp/prod/webhooks/acme-signing")
    assert looks_like_secret("xoxb-1234-5678-abcdef")


def test_batch_size_over_the_types_limit_is_refused():
    with pytest.raises(ValidationError) as exc_info:
        DestinationConfig.model_validate({"id": "bus", "name": "Bus", "type": "eventbridge",
                                          "settings": {"event_bus": "customer-bus"}, "batch_size": 11})
    assert "at most 10" in problems(exc_info.value)[0]["reason"]
    ok = DestinationConfig.model_validate({"id": "bus", "name": "Bus", "type": "eventbridge",
                                           "settings": {"event_bus": "customer-bus"}, "batch_size": 10})
    assert ok.effective_batch_size == BATCH_LIMITS["eventbridge"][1]
    with pytest.raises(ValidationError):
        webhook(batch_size=0)


def test_retry_window_defaults_to_4_hours_and_is_bounded():
    assert webhook().retry_window_hours == 4
    with pytest.raises(ValidationError) as exc_info:
        webhook(retry_window_hours=25)
    assert "retry_window_hours" in fields_of(exc_info)


def test_unknown_fields_wrong_settings_type_and_bad_ids_are_refused():
    with pytest.raises(ValidationError) as exc_info:
        webhook(colour="blue")
    assert "colour" in fields_of(exc_info)
    with pytest.raises(ValidationError):
        webhook(settings={"type": "slack", "webhook_url_secret_name": "x"})
    with pytest.raises(ValidationError) as exc_info:
        webhook(id="Not A Slug")
    assert "id" in fields_of(exc_info)
    with pytest.raises(ValidationError):
        webhook(type="carrier-pigeon")


def test_trigger_validation():
    with pytest.raises(ValidationError) as exc_info:
        slack(triggers=[{"name": "t", "event_type": "page",
                         "where": [{"path": "properties.n", "op": "gt", "value": 3}]}])
    assert any("triggers.0.where.0" in f for f in fields_of(exc_info))
    with pytest.raises(ValidationError):
        slack(triggers=[{"name": "t", "event_type": "identify", "event": "Signed Up"}])
    with pytest.raises(ValidationError):
        slack(triggers=[{"name": "t", "where": [{"path": "properties.p", "op": "in"}]}])


def test_config_is_frozen_and_ids_unique():
    config = webhook()
    with pytest.raises(ValidationError):
        config.enabled = False  # type: ignore[misc]
    data = {"id": "hooks", "name": "W", "type": "webhook", "settings": {"url": "https://example.com/"}}
    with pytest.raises(ValueError, match="used twice"):
        parse_destinations([data, data])


def test_summary_shows_what_it_receives_and_no_settings():
    text = slack().summary()
    assert text == ('slack | triggers: Pricing viewed: page "Pricing" views by a member of "high-intent"')
    assert "(disabled)" in webhook(enabled=False).summary()
    assert "example.com" not in webhook().summary()
    assert "receives nothing" in webhook(audiences=[]).summary()


def test_field_mapping_maps_present_traits_only():
    config = webhook(field_mapping={"email": "contact_email", "address.city": "city"})
    assert config.map_traits({"email": "a@example.com", "plan": "pro"}) == {"contact_email": "a@example.com"}
    assert config.map_traits({"address": {"city": "Lyon"}}) == {"city": "Lyon"}
