"""Slack messages: escaping, Slack's length limits, template validation, block shapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.activation.slack_message import (
    AUDIENCE_FIELDS,
    CONTEXT_TEXT_MAX,
    ELLIPSIS,
    SECTION_FIELD_TEXT_MAX,
    SECTION_FIELDS_MAX,
    SECTION_TEXT_MAX,
    VALUE_MAX,
    MessageTemplate,
    audience_change_message,
    audience_template,
    escape,
    trigger_message,
    trigger_template,
    truncate,
)
from cdp.segmentation.audience_events import audience_event


def entered(name="High intent", user="u1", transition="entered"):
    return audience_event(audience_id="aud_1", audience_name=name, profile_id="p1", person={"userId": user},
                          transition=transition, version=3, at="2026-12-06T03:00:00.000Z")


PRICING = {"type": "track", "event": "Pricing Viewed", "userId": "u1",
           "timestamp": "2026-12-06T03:00:00.000Z", "properties": {"plan": "pro"}}


def every_text(message):
    """Every text string a message sends, top-level and in blocks."""
    yield message["text"]
    for block in message["blocks"]:
        if "text" in block:
            yield block["text"]["text"]
        for item in block.get("fields", []) + block.get("elements", []):
            yield item["text"]


# Escaping.

def test_escape_converts_exactly_the_three_control_characters():
    assert escape("a & b <c> *d* _e_") == "a &amp; b &lt;c&gt; *d* _e_"


def test_escape_does_not_double_escape_its_own_entities():
    assert escape("<") == "&lt;" and escape("&lt;") == "&amp;lt;"


def test_user_values_cannot_inject_mentions_or_links():
    message = audience_change_message(entered(name="<!channel> <https://evil.example|click>", user="a&b"))
    headline = message["blocks"][0]["text"]["text"]
    assert "<" not in headline and ">" not in headline
    assert "&lt;!channel&gt;" in headline and "a&amp;b" in headline


def test_template_text_itself_is_not_escaped():
    template = audience_template("<https://cdp.example/audiences|{audience_name}> & {person}")
    headline = audience_change_message(entered(name="A<B"), template)["text"]
    assert headline == "<https://cdp.example/audiences|A&lt;B> & u1"


def test_profile_summary_keys_and_values_are_escaped():
    message = trigger_message("r", PRICING, {"<b>": "x > y"})
    assert message["blocks"][1]["fields"][0]["text"] == "*&lt;b&gt;*\nx &gt; y"


# Truncation.

def test_truncate_keeps_text_at_the_limit_untouched():
    text = "x" * SECTION_TEXT_MAX
    assert truncate(text, SECTION_TEXT_MAX) == text


def test_truncate_cuts_one_over_the_limit_to_exactly_the_limit():
    cut = truncate("x" * (SECTION_TEXT_MAX + 1), SECTION_TEXT_MAX)
    assert len(cut) == SECTION_TEXT_MAX and cut.endswith(ELLIPSIS)


@pytest.mark.parametrize("prefix", range(0, 6))
def test_truncate_never_splits_an_entity(prefix):
    text = "y" * (10 - prefix) + "&amp;" * 4
    cut = truncate(text, 10)
    body = cut.removesuffix(ELLIPSIS)
    assert len(cut) <= 10
    assert body.count("&") == body.count(";")


def test_long_values_are_cut_and_section_text_stays_within_the_limit():
    template = audience_template(" ".join(["{audience_name}"] * 10))
    headline = audience_change_message(entered(name="n" * 10_000), template)["text"]
    assert len(headline) <= SECTION_TEXT_MAX
    assert headline.split(" ")[0] == "n" * (VALUE_MAX - 1) + ELLIPSIS


def test_section_text_cut_exactly_at_the_limit():
    template = audience_template("x" * (SECTION_TEXT_MAX + 50) + "{person}")
    headline = audience_change_message(entered(), template)["blocks"][0]["text"]["text"]
    assert len(headline) == SECTION_TEXT_MAX and headline.endswith(ELLIPSIS)


def test_escaping_that_lengthens_a_value_is_counted_before_cutting():
    headline = audience_change_message(entered(name="<" * 2000), audience_template("{audience_name}"))["text"]
    assert len(headline) <= VALUE_MAX
    assert headline.removesuffix(ELLIPSIS).replace("&lt;", "") == ""


def test_summary_fields_respect_count_and_length_limits():
    summary = {f"trait_{i}": "v" * 5000 for i in range(SECTION_FIELDS_MAX + 3)}
    message = trigger_message("r", PRICING, summary)
    fields = message["blocks"][1]["fields"]
    assert len(fields) == SECTION_FIELDS_MAX
    assert all(len(field["text"]) <= SECTION_FIELD_TEXT_MAX for field in fields)
    assert "Not shown: 3 more" in message["blocks"][2]["elements"][0]["text"]


def test_context_text_stays_within_the_limit():
    message = trigger_message("r", {**PRICING, "event": "e" * 10_000, "timestamp": "t" * 10_000})
    assert all(len(element["text"]) <= CONTEXT_TEXT_MAX for element in message["blocks"][-1]["elements"])


# Template validation.

def test_unknown_field_is_refused_up_front_with_the_allowed_fields():
    with pytest.raises(ValueError, match=r"unknown field \{audience\}.*\{audience_name\}"):
        audience_template("{audience} changed")


def test_trigger_fields_are_not_audience_fields():
    with pytest.raises(ValueError, match=r"unknown field \{audience_name\}"):
        trigger_template("{audience_name}")


@pytest.mark.parametrize("template, message", [
    ("{} entered", "positional"),
    ("{0} entered", "positional"),
    ("{person.__class__}", "unknown field"),
    ("{person[0]}", "unknown field"),
    ("{person!r}", "conversion or format spec"),
    ("{person:>20}", "conversion or format spec"),
    ("{person", "not a valid format string"),
    ("person}", "not a valid format string"),
    ("", "non-empty"),
    ("   ", "non-empty"),
])
def test_invalid_templates_are_refused_with_a_clear_message(template, message):
    with pytest.raises(ValueError, match=message):
        audience_template(template)


def test_a_template_string_passed_at_send_time_is_validated_too():
    with pytest.raises(ValueError, match="unknown field"):
        trigger_message("r", PRICING, None, template="{nope}")


def test_literal_braces_are_allowed_when_doubled():
    assert audience_change_message(entered(), audience_template("{{json}} {person}"))["text"] == "{json} u1"


def test_every_audience_field_renders():
    template = audience_template(" | ".join("{" + name + "}" for name in sorted(AUDIENCE_FIELDS)))
    headline = audience_change_message(entered(), template)["text"]
    # anonymous_id, audience_id, audience_name, event, person, profile_id, timestamp, transition, user_id
    assert headline == ("(none) | aud_1 | High intent | Audience Entered | u1 | p1 | "
                        "2026-12-06T03:00:00.000Z | entered | u1")


def test_missing_values_render_as_none_marker():
    event = {**PRICING, "userId": None, "anonymousId": "anon-1"}
    assert trigger_message("r", event, template="{user_id}/{anonymous_id}/{person}")["text"] == "(none)/anon-1/anon-1"


# Shape.

def test_audience_change_message_shape():
    message = audience_change_message(entered())
    assert message == {
        "text": "*u1* entered the audience *High intent*",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "*u1* entered the audience *High intent*"}},
            {"type": "context", "elements": [{"type": "mrkdwn",
                                              "text": "Audience: aud_1 · Profile: p1 · At: 2026-12-06T03:00:00.000Z"}]},
        ],
    }
    json.dumps(message)  # what the webhook posts


def test_audience_exit_says_exited():
    assert audience_change_message(entered(transition="exited"))["text"] == "*u1* exited the audience *High intent*"


def test_non_audience_event_is_refused():
    with pytest.raises(ValueError, match="Audience Entered"):
        audience_change_message(PRICING)


def test_trigger_message_shape():
    message = trigger_message("High intent on pricing", PRICING, {"email": "ana@example.com", "plan": "pro",
                                                                  "audiences": ["a", "b"], "vip": True})
    assert message["text"] == ":rotating_light: *High intent on pricing*: *u1* did *Pricing Viewed*"
    assert [block["type"] for block in message["blocks"]] == ["section", "section", "context"]
    assert [field["text"] for field in message["blocks"][1]["fields"]] == [
        "*email*\nana@example.com", "*plan*\npro", '*audiences*\n["a", "b"]', "*vip*\ntrue"]
    assert all(field["type"] == "mrkdwn" for field in message["blocks"][1]["fields"])
    assert message["blocks"][2]["elements"] == [
        {"type": "mrkdwn", "text": "Event: Pricing Viewed · At: 2026-12-06T03:00:00.000Z"}]


def test_trigger_without_summary_has_no_fields_block():
    assert [block["type"] for block in trigger_message("r", PRICING)["blocks"]] == ["section", "context"]


@settings(max_examples=100, deadline=None)
@given(name=st.text(max_size=4000), user=st.text(min_size=1, max_size=600),
       summary=st.dictionaries(st.text(max_size=300), st.text(max_size=3000), max_size=14))
def test_any_values_give_a_valid_message(name, user, summary):
    for message in (audience_change_message(entered(name=name, user=user)),
                    trigger_message(name, {**PRICING, "userId": user}, summary)):
        texts = list(every_text(message))
        assert all(texts), "Slack refuses empty text objects"
        assert all("<" not in text and ">" not in text for text in texts)
        assert len(message["blocks"][0]["text"]["text"]) <= SECTION_TEXT_MAX
        for block in message["blocks"]:
            assert len(block.get("fields", [])) <= SECTION_FIELDS_MAX
            assert all(len(field["text"]) <= SECTION_FIELD_TEXT_MAX for field in block.get("fields", []))
            assert len(block.get("elements", [])) <= 10


def test_message_template_can_be_built_directly_with_any_field_set():
    assert MessageTemplate("{a}", {"a"}).render({"a": "<x>"}) == "&lt;x&gt;"
