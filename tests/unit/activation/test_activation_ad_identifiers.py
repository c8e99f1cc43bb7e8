"""Ad-platform identifiers: Meta Custom Audiences and Google Customer Match normalisation,
hashing and batching (``cdp.activation.ad_identifiers``)."""

from __future__ import annotations

import hashlib
import itertools
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.activation.ad_identifiers import (
    GOOGLE_MAX_IDENTIFIERS_PER_REQUEST,
    GOOGLE_MAX_IDENTIFIERS_PER_USER,
    META_DEFAULT_SCHEMA,
    META_MAX_ROWS_PER_REQUEST,
    google_requests,
    google_user_identifiers,
    meta_payloads,
    meta_row,
    normalise_city_meta,
    normalise_country_google,
    normalise_country_meta,
    normalise_email,
    normalise_madid,
    normalise_name_google,
    normalise_name_meta,
    normalise_phone_e164,
    normalise_phone_meta,
    normalise_postal_code_google,
    normalise_state_meta,
    normalise_zip_meta,
    sha256_hex,
)

# Vectors printed in documentation, never recomputed by the code under test.
TEST_AT_EXAMPLE_SHA256 = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
# X (Twitter) Ads API "Custom Audiences User Data": sha256("adsapi").
X_ADS_ADSAPI_SHA256 = "49e0be2aeccfb51a8dee4c945c8a70a9ac500cf6f5cb08112575f74db9b1470d"
# TikTok "List of supported IDs and formats for a customer file": normalised "janedoe@gmail.com".
TIKTOK_JANEDOE_SHA256 = "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
# Meta Conversions API sample payload's "ph" hash: the phone 1-234-567-8901 as Meta wants
# it, country code and digits without "+".
META_SAMPLE_PHONE_SHA256 = "254aa248acb47dd654ca3ea53f48c2c26d641d23d7e2e93a1ec56258df7674c4"

IDFA = "AECE52E7-03EE-455A-B3C4-E57283966239"  # Meta's own MADID example


def independent_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- hashing --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("test@example.com", TEST_AT_EXAMPLE_SHA256),
    ("adsapi", X_ADS_ADSAPI_SHA256),
    ("janedoe@gmail.com", TIKTOK_JANEDOE_SHA256),
])
def test_sha256_hex_matches_published_vectors(value, expected):
    assert sha256_hex(value) == expected


def test_sha256_hex_hashes_utf8_bytes_in_lowercase_hex():
    digest = sha256_hex("émilie")
    assert digest == independent_sha256("émilie")
    assert digest == digest.lower() and len(digest) == 64


def test_meta_phone_hash_matches_the_hash_in_metas_sample_payload():
    phone = normalise_phone_meta("+1 (234) 567-8901")
    assert phone == "12345678901"
    assert sha256_hex(phone) == META_SAMPLE_PHONE_SHA256
    # The same number with its "+" hashes differently: why Meta's form has none.
    assert sha256_hex("+12345678901") != META_SAMPLE_PHONE_SHA256


# --- email ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["test@example.com", "  Test@Example.COM\t", "\nTEST@EXAMPLE.COM "])
def test_email_is_trimmed_and_lowercased_to_the_documented_vector(raw):
    email = normalise_email(raw)
    assert email == "test@example.com"
    assert sha256_hex(email) == TEST_AT_EXAMPLE_SHA256


def test_gmail_dots_and_plus_tags_are_kept():
    assert normalise_email("Jane.Doe+ads@Gmail.com") == "jane.doe+ads@gmail.com"
    assert normalise_email("jane.doe@googlemail.com") == "jane.doe@googlemail.com"


def test_unicode_email_is_nfc_normalised():
    decomposed = unicodedata.normalize("NFD", "josé@example.com")
    assert normalise_email(decomposed) == unicodedata.normalize("NFC", "josé@example.com")


@pytest.mark.parametrize("raw", [
    "no-at-sign.example.com", "two@@example.com", "user@localhost", "us er@example.com",
    "", "   ", None, 42, True, ["test@example.com"], "a" * 400 + "@example.com",
])
def test_invalid_emails_are_skipped_not_raised(raw):
    assert normalise_email(raw) is None


# --- phone ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "code", "expected"), [
    ("+1 650-555-1234", None, "+16505551234"),
    ("+1 650-555-1234", 44, "+16505551234"),          # international keeps its own code
    ("(650) 555-1234", 1, "+16505551234"),             # national, default NANP
    ("1 650 555 1234", 1, "+16505551234"),             # US trunk prefix 1 dropped
    ("020 7946 0958", 44, "+442079460958"),            # UK trunk 0 dropped
    ("07911 123456", 44, "+447911123456"),
    ("0044 20 7946 0958", None, "+442079460958"),      # 00 international prefix
    ("(+44) 20 7946 0958", 1, "+442079460958"),
    ("16505551234", None, "+16505551234"),             # digits already with country code
    (16505551234, None, "+16505551234"),
    ("tel: +1-650-555-1234", None, "+16505551234"),    # letters removed
])
def test_phone_normalises_to_e164_for_google(raw, code, expected):
    assert normalise_phone_e164(raw, code) == expected


def test_meta_phone_is_e164_without_the_plus():
    assert normalise_phone_meta("020 7946 0958", 44) == "442079460958"
    assert normalise_phone_meta("+44 20 7946 0958") == "442079460958"


@pytest.mark.parametrize(("raw", "code"), [
    ("123", 1), ("+1 555", None), ("12", None), ("", 1), ("   ", 1), ("call me", 1),
    (None, 1), (True, 1), (3.14, 1),
    ("020 7946 0958", None),  # national without a default: the trunk 0 is no country code
])
def test_invalid_phones_are_skipped_not_raised(raw, code):
    assert normalise_phone_e164(raw, code) is None
    assert normalise_phone_meta(raw, code) is None


# --- names, places ----------------------------------------------------------------------------

def test_meta_names_are_lowercased_without_punctuation_keeping_accents():
    assert normalise_name_meta("  O'Brien ") == "obrien"
    assert normalise_name_meta("Jean-Luc") == "jeanluc"
    assert normalise_name_meta("ÉMILIE") == "émilie"
    assert normalise_name_meta("Mary   Ann") == "mary ann"
    assert normalise_name_meta("F.") == "f"
    assert normalise_name_meta("...") is None


def test_composed_and_decomposed_names_hash_the_same():
    composed = unicodedata.normalize("NFC", "Zoë")
    decomposed = unicodedata.normalize("NFD", "Zoë")
    assert composed != decomposed
    assert sha256_hex(normalise_name_meta(decomposed)) == sha256_hex(normalise_name_meta(composed))
    assert normalise_name_google(decomposed) == normalise_name_google(composed) == "zoë"
    assert sha256_hex(normalise_name_google(decomposed)) == independent_sha256("zo\u00eb")


def test_google_names_are_only_trimmed_and_lowercased():
    assert normalise_name_google("  John ") == "john"
    assert normalise_name_google("O'Brien") == "o'brien"
    assert normalise_name_google(" ") is None


def test_meta_city_and_state_keep_lowercase_letters_only():
    assert normalise_city_meta("New York") == "newyork"
    assert normalise_city_meta("St. Louis ") == "stlouis"
    assert normalise_city_meta("São Paulo") == "sãopaulo"
    assert normalise_state_meta("CA") == "ca"
    assert normalise_state_meta("New South Wales") == "newsouthwales"
    assert normalise_city_meta("123") is None


def test_country_codes_differ_by_platform():
    assert normalise_country_meta(" US ") == "us"
    assert normalise_country_google(" us ") == "US"
    for bad in ("USA", "U", "1a", "", None):
        assert normalise_country_meta(bad) is None
        assert normalise_country_google(bad) is None


@pytest.mark.parametrize(("raw", "country", "expected"), [
    ("94103", "US", "94103"),
    ("94103-1234", "us", "94103"),
    ("941031234", "US", "94103"),
    ("9410", "US", None),
    ("SW1A 1AA", "GB", "sw1a1"),
    ("m1 1ae", "GB", "m11"),
    ("sw1a1", "GB", "sw1a1"),              # already a sector
    ("not a postcode", "GB", None),
    ("94103-1234", None, "94103"),          # ZIP+4 recognised without a country
    ("75008", "FR", "75008"),
    ("K1A 0B1", "CA", "k1a0b1"),
    ("  ", "US", None),
])
def test_meta_zip_rules(raw, country, expected):
    assert normalise_zip_meta(raw, country) == expected


def test_google_postal_code_is_trimmed_and_not_otherwise_changed():
    assert normalise_postal_code_google("  SW1A 1AA ") == "SW1A 1AA"
    assert normalise_postal_code_google("") is None


def test_madid_is_lowercased_with_hyphens_and_malformed_ids_are_skipped():
    assert normalise_madid(f"  {IDFA} ") == IDFA.lower()
    assert normalise_madid(IDFA.replace("-", "")) is None
    assert normalise_madid("00000000-0000-0000-0000-000000000000") is None
    assert normalise_madid("not-an-id") is None


# --- Meta rows and payloads -----------------------------------------------------------------

PROFILE = {
    "email": " Test@Example.com ",
    "phone": "020 7946 0958",
    "first_name": "Émilie",
    "last_name": "O'Brien",
    "city": "London",
    "state": None,
    "zip": "SW1A 1AA",
    "country": "GB",
    "madid": IDFA,
}


def test_meta_row_follows_the_schema_hashing_all_but_madid():
    row = meta_row(PROFILE, ["EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "MADID"])
    assert row == [
        TEST_AT_EXAMPLE_SHA256,
        independent_sha256("442079460958"),   # national number read with the profile's country
        independent_sha256("émilie"),
        independent_sha256("obrien"),
        independent_sha256("london"),
        "",                                   # missing: empty string keeps the columns aligned
        independent_sha256("sw1a1"),
        independent_sha256("gb"),
        IDFA.lower(),                         # MADID is not hashed
    ]


def test_meta_row_default_schema_covers_every_supported_key():
    assert META_DEFAULT_SCHEMA == ("EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "MADID")
    row = meta_row(PROFILE)
    assert row is not None and len(row) == len(META_DEFAULT_SCHEMA)


def test_meta_row_uses_the_first_valid_value_of_a_list():
    assert meta_row({"email": ["not-an-email", "Test@Example.com", "b@example.com"]}, ["EMAIL"]) == [
        TEST_AT_EXAMPLE_SHA256]


def test_meta_row_reads_national_phones_with_the_default_calling_code():
    assert meta_row({"phone": "(234) 567-8901"}, ["PHONE"], default_calling_code=1) == [META_SAMPLE_PHONE_SHA256]
    # Without a default the digits are taken to start with a country code: +234 is Nigeria.
    assert meta_row({"phone": "(234) 567-8901"}, ["PHONE"]) == [independent_sha256("2345678901")]


def test_meta_row_without_any_usable_value_is_skipped():
    assert meta_row({"email": "nobody", "phone": "12"}, ["EMAIL", "PHONE"]) is None
    assert meta_row({}, META_DEFAULT_SCHEMA) is None


@pytest.mark.parametrize("schema", [["EMAIL", "SSN"], [], ["EMAIL", "email"]])
def test_meta_schema_with_unknown_or_repeated_keys_is_refused(schema):
    with pytest.raises(ValueError):
        meta_row(PROFILE, schema)


def _emails(count: int) -> list[dict[str, Any]]:
    return [{"email": f"user{i}@example.com"} for i in range(count)]


def test_meta_payload_exactly_at_the_limit_is_one_request():
    payloads = list(meta_payloads(_emails(META_MAX_ROWS_PER_REQUEST), ["EMAIL"]))
    assert META_MAX_ROWS_PER_REQUEST == 10_000
    assert len(payloads) == 1
    assert payloads[0]["schema"] == ["EMAIL"]
    assert len(payloads[0]["data"]) == 10_000
    assert payloads[0]["data"][0] == [independent_sha256("user0@example.com")]


def test_meta_payloads_one_over_the_limit_split_into_two_requests():
    payloads = list(meta_payloads(_emails(META_MAX_ROWS_PER_REQUEST + 1), ["EMAIL"]))
    assert [len(payload["data"]) for payload in payloads] == [10_000, 1]
    assert payloads[1]["data"] == [[independent_sha256("user10000@example.com")]]


def test_meta_payloads_skip_profiles_without_identifiers():
    profiles = [{"email": "a@example.com"}, {"email": "nope"}, {}, {"email": "b@example.com"}]
    payloads = list(meta_payloads(profiles, ["EMAIL"]))
    assert payloads == [{"schema": ["EMAIL"], "data": [[independent_sha256("a@example.com")],
                                                       [independent_sha256("b@example.com")]]}]
    assert list(meta_payloads([{}], ["EMAIL"])) == []


def test_meta_payloads_are_lazy_over_an_endless_audience():
    endless = ({"email": f"user{i}@example.com"} for i in itertools.count())
    first = next(meta_payloads(endless, ["EMAIL"]))
    assert len(first["data"]) == META_MAX_ROWS_PER_REQUEST
    assert next(endless) == {"email": "user10000@example.com"}  # nothing read ahead


@pytest.mark.parametrize("max_rows", [0, META_MAX_ROWS_PER_REQUEST + 1])
def test_meta_batch_size_above_metas_limit_is_refused(max_rows):
    with pytest.raises(ValueError):
        next(meta_payloads(_emails(1), ["EMAIL"], max_rows=max_rows))


# --- Google identifiers and requests --------------------------------------------------------

def test_google_user_identifiers_shape():
    identifiers = google_user_identifiers(PROFILE)
    assert identifiers == [
        {"hashedEmail": TEST_AT_EXAMPLE_SHA256},
        {"hashedPhoneNumber": independent_sha256("+442079460958")},
        {"addressInfo": {
            "hashedFirstName": independent_sha256("émilie"),
            "hashedLastName": independent_sha256("o'brien"),   # Google keeps punctuation
            "countryCode": "GB",                                # not hashed, uppercase
            "postalCode": "SW1A 1AA",                           # not hashed
        }},
    ]


def test_google_address_needs_first_and_last_name_country_and_postal_code():
    full = {"first_name": "John", "last_name": "Doe", "country": "us", "zip": "10011"}
    assert google_user_identifiers(full) == [{"addressInfo": {
        "hashedFirstName": independent_sha256("john"), "hashedLastName": independent_sha256("doe"),
        "countryCode": "US", "postalCode": "10011"}}]
    for missing in full:
        partial = {key: value for key, value in full.items() if key != missing}
        assert google_user_identifiers(partial) == []


def test_google_uses_every_distinct_valid_email_and_phone():
    profile = {"email": ["A@example.com", "a@example.com ", "bad", "b@example.com"],
               "phone": ["+1 650 555 1234", "(650) 555-1234", "12"]}
    assert google_user_identifiers(profile, default_calling_code=1) == [
        {"hashedEmail": independent_sha256("a@example.com")},
        {"hashedEmail": independent_sha256("b@example.com")},
        {"hashedPhoneNumber": independent_sha256("+16505551234")},
    ]


def test_google_caps_a_user_at_twenty_identifiers():
    profile = {"email": [f"alias{i}@example.com" for i in range(25)]}
    identifiers = google_user_identifiers(profile)
    assert GOOGLE_MAX_IDENTIFIERS_PER_USER == 20
    assert len(identifiers) == 20
    assert identifiers[-1] == {"hashedEmail": independent_sha256("alias19@example.com")}


def _twenty_emails_each(count: int) -> list[dict[str, Any]]:
    return [{"email": [f"u{i}.{j}@example.com" for j in range(20)]} for i in range(count)]


def test_google_request_exactly_at_the_identifier_limit_is_one_request():
    requests = list(google_requests(_twenty_emails_each(5_000)))
    assert GOOGLE_MAX_IDENTIFIERS_PER_REQUEST == 100_000
    assert len(requests) == 1
    operations = requests[0]["operations"]
    assert len(operations) == 5_000
    assert sum(len(op["create"]["userIdentifiers"]) for op in operations) == 100_000


def test_google_requests_one_user_over_the_limit_split_without_splitting_a_user():
    requests = list(google_requests(_twenty_emails_each(5_001)))
    assert [len(request["operations"]) for request in requests] == [5_000, 1]
    assert len(requests[1]["operations"][0]["create"]["userIdentifiers"]) == 20


def test_google_requests_count_identifiers_not_operations():
    profiles = [{"email": f"user{i}@example.com"} for i in range(GOOGLE_MAX_IDENTIFIERS_PER_REQUEST + 1)]
    requests = list(google_requests(profiles))
    assert [len(request["operations"]) for request in requests] == [100_000, 1]


def test_google_remove_operations_and_skipped_profiles():
    requests = list(google_requests([{"email": "x@example.com"}, {"email": "nope"}, {}], remove=True))
    assert requests == [{"operations": [{"remove": {"userIdentifiers": [
        {"hashedEmail": independent_sha256("x@example.com")}]}}]}]
    assert list(google_requests([{}])) == []


def test_google_requests_are_lazy_over_an_endless_audience():
    endless = ({"email": f"user{i}@example.com"} for i in itertools.count())
    first = next(google_requests(endless, max_identifiers=100))
    assert len(first["operations"]) == 100
    # The 101st profile was read to learn the batch was full; nothing beyond it.
    assert next(endless) == {"email": "user101@example.com"}


@pytest.mark.parametrize("max_identifiers", [19, GOOGLE_MAX_IDENTIFIERS_PER_REQUEST + 1])
def test_google_batch_size_outside_the_documented_limits_is_refused(max_identifiers):
    with pytest.raises(ValueError):
        next(google_requests(_emails(1), max_identifiers=max_identifiers))


# --- normalising twice is normalising once --------------------------------------------------

NORMALISERS: dict[str, Callable[[Any], str | None]] = {
    "email": normalise_email,
    "phone_e164_default_44": lambda value: normalise_phone_e164(value, 44),
    "phone_e164_no_default": normalise_phone_e164,
    # Meta's phone has no "+", so a second pass must not apply a national default.
    "phone_meta": normalise_phone_meta,
    "name_meta": normalise_name_meta,
    "name_google": normalise_name_google,
    "city_meta": normalise_city_meta,
    "state_meta": normalise_state_meta,
    "country_meta": normalise_country_meta,
    "country_google": normalise_country_google,
    "zip_meta_us": lambda value: normalise_zip_meta(value, "US"),
    "zip_meta_gb": lambda value: normalise_zip_meta(value, "GB"),
    "zip_meta_unknown": normalise_zip_meta,
    "postal_google": normalise_postal_code_google,
    "madid": normalise_madid,
}

_phoneish = st.text(alphabet="+0123456789 ()-.", max_size=24)
_identifierish = st.one_of(
    st.text(max_size=40),
    _phoneish,
    st.emails(),
    st.from_regex(r"[A-Za-z]{1,2}\d[A-Za-z\d]? ?\d[A-Za-z]{2}", fullmatch=True),
    st.from_regex(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
                  fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(NORMALISERS)), value=_identifierish)
def test_normalising_twice_equals_normalising_once(name, value):
    normalise = NORMALISERS[name]
    once = normalise(value)
    if once is not None:
        assert normalise(once) == once


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
                       st.lists(st.text(max_size=3), max_size=2)))
def test_normalisers_never_raise(value):
    for normalise in NORMALISERS.values():
        result = normalise(value)
        assert result is None or isinstance(result, str)
