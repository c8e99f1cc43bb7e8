"""Identifier extraction and normalisation (identity resolution's input)."""

from __future__ import annotations

import pytest

from cdp.identity.config import IdentifierType, IdentityConfig
from cdp.identity.identifiers import (
    Identifier,
    IdentifierRefused,
    extract_identifiers,
    normalise_email,
    normalise_phone,
)

CONFIG = IdentityConfig(default_phone_region="FR")


def ids(event, config=CONFIG):
    return extract_identifiers(event, config)


def test_every_source_is_extracted_and_normalised():
    result = ids({
        "type": "identify", "userId": " u-1 ", "anonymousId": "anon-1",
        "traits": {"email": " Ana@Example.COM ", "phone": "06 12 34 56 78"},
        "context": {"traits": {"email": "ana@example.com"},
                    "device": {"id": "dev-1", "advertisingId": "idfa-1", "type": "ios"},
                    "externalIds": [{"id": "cus_9", "type": "stripe_customer_id", "collection": "users",
                                     "encoding": "none"}]},
    })
    assert result.identifiers == [
        Identifier("user_id", "u-1"), Identifier("email", "ana@example.com"),
        Identifier("phone", "+33612345678"), Identifier("device_id", "dev-1"),
        Identifier("ios.idfa", "idfa-1"), Identifier("stripe_customer_id", "cus_9"),
        Identifier("anonymous_id", "anon-1"),
    ]
    assert result.refused == []


@pytest.mark.parametrize("value", ["", "  ", "null", "NULL", "undefined", "anonymous", "0", "-1",
                                   "00000000-0000-0000-0000-000000000000", "0000"])
def test_blocked_placeholder_values_are_refused(value):
    result = ids({"type": "identify", "userId": value, "anonymousId": "a-1"})
    assert Identifier("anonymous_id", "a-1") in result.identifiers
    assert [r.source for r in result.refused] == ["userId"]


def test_wrong_types_and_absurd_lengths_are_refused_with_reasons():
    result = ids({"type": "identify", "userId": "x" * 600, "traits": {"email": ["a@b.c"], "phone": True},
                  "context": {"externalIds": [{"id": "1"}, "nope"]}, "anonymousId": "a"})
    reasons = {r.source: r.reason for r in result.refused}
    assert "longer than 512" in reasons["userId"]
    assert "must be a string" in reasons["traits.email"]
    assert "must be a string" in reasons["traits.phone"]
    assert reasons["context.externalIds.0"].endswith("needs a type")
    assert reasons["context.externalIds.1"].endswith("needs a type")
    assert result.identifiers == [Identifier("anonymous_id", "a")]


def test_email_lookalikes_stay_distinct_and_compatibility_forms_fold():
    latin = normalise_email("ana@example.com")
    cyrillic = normalise_email("\u0430na@example.com")  # Cyrillic a
    assert latin != cyrillic
    assert normalise_email("\uff41\uff4e\uff41@example.com") == latin  # fullwidth letters fold under NFKC
    with pytest.raises(IdentifierRefused):
        normalise_email("not an email")


def test_phone_numbers_become_e164_and_local_numbers_need_a_region():
    assert normalise_phone("+1 (415) 555-2671", None) == "+14155552671"
    assert normalise_phone("06 12 34 56 78", "FR") == "+33612345678"
    with pytest.raises(IdentifierRefused, match="country code"):
        normalise_phone("06 12 34 56 78", None)
    with pytest.raises(IdentifierRefused):
        normalise_phone("12", "FR")


def test_alias_links_previous_id_and_refuses_an_alias_to_itself():
    linked = ids({"type": "alias", "userId": "u-1", "previousId": "anon-7"})
    assert linked.previous_id == "anon-7" and linked.identifiers == [Identifier("user_id", "u-1")]
    to_itself = ids({"type": "alias", "userId": "u-1", "previousId": " u-1 "})
    assert to_itself.previous_id is None
    assert [r.reason for r in to_itself.refused] == ["previousId equals userId"]


def test_configuration_knows_priorities_and_limits():
    assert CONFIG.type_of("user_id").limit == 1
    assert CONFIG.type_of("email").priority == 2
    assert CONFIG.type_of("stripe_customer_id").limit == 5  # unconfigured external type
    with pytest.raises(ValueError, match="unique"):
        IdentityConfig(types=(IdentifierType(name="email", priority=1, limit=1),) * 2)
