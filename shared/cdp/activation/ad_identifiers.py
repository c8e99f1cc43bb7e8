"""Identifiers for ad-platform audience uploads: normalised, hashed and batched per platform.

Meta Custom Audiences (``POST /{audience_id}/users``, multi-key schema) and Google Ads
Customer Match (``OfflineUserDataJobService.AddOfflineUserDataJobOperations``) match
customers on SHA-256 hashes, so a value that is normalised differently from the way the
platform normalises its own data never matches. Everything here is pure: plain dicts and
lists in, plain dicts and lists out; no AWS, no HTTP. Invalid values (an email without
``@``, a phone number with too few digits, a malformed advertising id) become ``None``
and are skipped; nothing here raises on bad data.

Sources relied on (stored copies read through the project's search tool):

- Meta, Marketing API "Custom Audience Users" reference
  (developers.facebook.com/docs/marketing-api/reference/custom-audience/users) and
  "Customer File Custom Audiences" guide: payload ``{"schema": [...], "data": [[...]]}``;
  "an unlimited number of records for an audience, but only a maximum of 10000 at a time"
  (:data:`META_MAX_ROWS_PER_REQUEST`).
- Meta's hashing and normalisation table for Custom Audiences. The stored copies of
  Meta's developer page cut off before the table, so it was read in vendors' mirrors of
  it (HCL Unica Link "Data Normalization" for the Facebook connector; Salesforce help
  article 000391108) and Meta Business Help Centre article 2082575038703844: EMAIL trim
  and lowercase; PHONE "remove symbols, letters, and any leading zeroes" and include the
  country code (Meta's examples ``1-234-567-8910``, ``+44 844 412 4653``); "if you are
  using a leading '+', this does not receive any matches when hashed. The format must be
  447123456 and not +447123456" (Salesforce), so Meta's hashed form is digits only.
  The remaining rows were NOT confirmed in a stored copy and follow Meta's table as
  published on developers.facebook.com: FN/LN lowercase, no punctuation, special
  characters as UTF-8; CT lowercase letters only, no punctuation, no white space; ST
  lowercase, no punctuation or white space; ZIP lowercase without white space, US the
  first 5 digits, UK the Area/District/Sector form; COUNTRY the lowercase ISO 3166-1
  alpha-2 code; MADID lowercase keeping hyphens and NOT hashed; every other key hashed.
  Meta's own Business SDK for the Conversions API (``serverside/normalize.py``, read in
  the code index) agrees where it overlaps: city and state without digits, dots, spaces
  or hyphens; ZIP without white space and cut at ``-``; country two letters, lowercase.
- Google Ads API, "Customer Match" guide
  (developers.google.com/google-ads/api/docs/remarketing/audience-types/customer-match):
  emails, first and last names hashed after trimming and lowercasing; "You're not
  required to remove all periods (.) preceding the domain name in gmail.com and
  googlemail.com email addresses"; phone numbers in E.164 (``+``, country code, up to 15
  digits) before hashing; ``addressInfo`` carries ``hashedFirstName``, ``hashedLastName``
  and the unhashed ``countryCode`` (two letters, ``"US"`` in Google's examples) and
  ``postalCode``. Country, postal code, city and state are never hashed (Google's
  "normalize and hash user-provided data" section of the conversions guides).
- Google Ads API limits (AddOfflineUserDataJobOperationsRequest documentation, as quoted
  by the Google Ads API team on the adwords-api forum, and the
  ``TOO_MANY_USER_IDENTIFIERS`` error: "Maximum number of user identifiers allowed per
  request is 100,000 and per operation is 20"): at most 100,000 user identifiers across
  all UserData objects of one request (the limit counts identifiers, not operations) and
  at most 20 identifiers per UserData (:data:`GOOGLE_MAX_IDENTIFIERS_PER_REQUEST`,
  :data:`GOOGLE_MAX_IDENTIFIERS_PER_USER`).

Where the platforms differ, both rules are implemented:

============  ======================================  =====================================
kind          Meta                                    Google
============  ======================================  =====================================
email         trim, lowercase                         the same (no gmail dot or ``+tag``
                                                      removal: Google says it is not
                                                      required, Meta never asks for it)
phone         digits with country code, no ``+``      E.164 with ``+``
names         lowercase, punctuation removed          trim, lowercase
country       lowercase, hashed                       uppercase, not hashed
zip / postal  lowercase, no spaces, US 5 digits,      trimmed, not hashed
              UK sector; hashed
============  ======================================  =====================================

All text is NFC-normalised first, so a name typed with a combining accent and one typed
with the precomposed letter hash to the same UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import phonenumbers

META_MAX_ROWS_PER_REQUEST = 10_000
GOOGLE_MAX_IDENTIFIERS_PER_REQUEST = 100_000
GOOGLE_MAX_IDENTIFIERS_PER_USER = 20

# Longest input worth looking at; anything longer is not an identifier.
_MAX_INPUT_LENGTH = 320

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MADID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ZERO_MADID = "00000000-0000-0000-0000-000000000000"  # what iOS reports when tracking is off
_US_ZIP = re.compile(r"^(\d{5})(?:-?\d{4})?$")
_UK_POSTCODE = re.compile(r"^([a-z]{1,2}\d[a-z\d]?)(\d)([a-z]{2})?$")
_INTERNATIONAL_PREFIX = re.compile(r"^[\s(]*(\+|00)")


def sha256_hex(value: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 bytes of ``value`` (what both platforms expect)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _text(value: Any) -> str | None:
    """A usable string from a trait value: strings and integers, NFC-normalised and trimmed."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if len(text) > _MAX_INPUT_LENGTH:
        return None
    text = unicodedata.normalize("NFC", text).strip()
    return text or None


def _lower(text: str) -> str:
    # Lowercasing can decompose (U+0130 becomes "i" plus a combining dot), so compose again.
    return unicodedata.normalize("NFC", text.lower())


# --- shared by both platforms -------------------------------------------------------------

def normalise_email(value: Any) -> str | None:
    """Trimmed, lowercased email; ``None`` unless it looks like ``local@domain.tld``.

    Both platforms ask for exactly this. Dots and ``+tags`` in Gmail addresses are kept:
    Google's Customer Match guide says removing them is not required, and Meta does not
    mention it (Campaign Manager 360's enhanced conversions, a different product, does
    require the dot removal; it is not done here).
    """
    text = _text(value)
    if text is None:
        return None
    email = _lower(text)
    return email if _EMAIL.match(email) else None


def _phone_number(value: Any, default_calling_code: int | None) -> phonenumbers.PhoneNumber | None:
    text = _text(value)
    if text is None:
        return None
    digits = re.sub(r"\D", "", text)
    if not digits:
        return None
    prefix = _INTERNATIONAL_PREFIX.match(text)
    try:
        if prefix is not None:
            international = digits[2:] if prefix.group(1) == "00" else digits
            number = phonenumbers.parse("+" + international, None)
        elif default_calling_code:
            region = phonenumbers.region_code_for_country_code(default_calling_code)
            if region == phonenumbers.UNKNOWN_REGION:
                number = phonenumbers.parse(f"+{default_calling_code}{digits.lstrip('0')}", None)
            else:
                # The region's own rules drop the trunk prefix ("0" in the UK, "1" in the US).
                number = phonenumbers.parse(digits, region)
        else:
            # No default: the digits must already start with the country code, as Meta
            # asks ("1-234-567-8910"); a leading trunk zero cannot be one.
            number = phonenumbers.parse("+" + digits, None)
        if not phonenumbers.is_possible_number(number):
            return None
        # Some impossible inputs (runs of zeros) format to a string that parses back to
        # another number; refuse them so the hashed value is a fixed point.
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        reparsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.format_number(reparsed, phonenumbers.PhoneNumberFormat.E164) != e164:
        return None
    return number


def normalise_phone_e164(value: Any, default_calling_code: int | None = None) -> str | None:
    """E.164 (``+`` country code and digits), Google's form; ``None`` if not a possible number.

    Numbers written with ``+`` or the ``00`` international prefix keep their own country
    code. National numbers take ``default_calling_code`` (``44`` for the UK, ``1`` for
    NANP), dropping the trunk prefix; without a default the digits are taken to start with
    the country code already. Letters, punctuation and extensions are dropped.
    """
    number = _phone_number(value, default_calling_code)
    return None if number is None else phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_phone_meta(value: Any, default_calling_code: int | None = None) -> str | None:
    """Meta's PHONE: country code and digits, no ``+`` and no leading zeros.

    Parsed as :func:`normalise_phone_e164`. The result has no ``+``, so normalising it a
    second time must be done without a default calling code (it is international already).
    """
    e164 = normalise_phone_e164(value, default_calling_code)
    return None if e164 is None else e164[1:]


def normalise_madid(value: Any) -> str | None:
    """Mobile advertiser id (IDFA or Android advertising id): lowercase with hyphens.

    Meta's MADID is sent as is, not hashed. The all-zero id that iOS reports when tracking
    is limited identifies nobody, so it is skipped like any malformed id.
    """
    text = _text(value)
    if text is None:
        return None
    madid = text.lower()
    return madid if _MADID.match(madid) and madid != _ZERO_MADID else None


# --- Meta ---------------------------------------------------------------------------------

def normalise_name_meta(value: Any) -> str | None:
    """Meta's FN / LN: lowercase, punctuation removed, letters kept in UTF-8 (accents too).

    ``"O'Brien"`` becomes ``"obrien"`` and ``"Jean-Luc"`` ``"jeanluc"``; runs of white
    space inside a name become one space.
    """
    text = _text(value)
    if text is None:
        return None
    kept = "".join(ch for ch in _lower(text) if not unicodedata.category(ch).startswith("P"))
    name = unicodedata.normalize("NFC", " ".join(kept.split()))
    return name or None


def _letters_only(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    letters = unicodedata.normalize("NFC", "".join(ch for ch in _lower(text) if ch.isalpha()))
    return letters or None


def normalise_city_meta(value: Any) -> str | None:
    """Meta's CT: lowercase letters only, no punctuation, digits or white space."""
    return _letters_only(value)


def normalise_state_meta(value: Any) -> str | None:
    """Meta's ST: lowercase letters only (``"CA"`` becomes ``"ca"``, ``"New York"`` ``"newyork"``)."""
    return _letters_only(value)


def normalise_country_meta(value: Any) -> str | None:
    """Meta's COUNTRY: the ISO 3166-1 alpha-2 code in lowercase; anything else is ``None``."""
    text = _text(value)
    if text is None:
        return None
    code = text.lower()
    return code if re.fullmatch(r"[a-z]{2}", code) else None


def normalise_zip_meta(value: Any, country: Any = None) -> str | None:
    """Meta's ZIP: lowercase, no white space; US the first 5 digits; UK Area/District/Sector.

    ``country`` (ISO alpha-2, any case) picks the US or UK rule; other countries, and
    values whose country is unknown, are only lowercased and stripped of white space,
    except that a US ZIP+4 (``12345-6789``) is recognised without a country. A US value
    that is not 5 or 9 digits, or a UK one that is not a postcode, is ``None``.
    """
    text = _text(value)
    if text is None:
        return None
    compact = "".join(_lower(text).split())
    country_code = normalise_country_meta(country)
    if country_code == "us":
        us = _US_ZIP.match(compact)
        return us.group(1) if us else None
    if country_code == "gb":
        uk = _UK_POSTCODE.match(compact)
        # The sector is the outward code and the first character of the inward code.
        return uk.group(1) + uk.group(2) if uk else None
    if country_code is None and re.fullmatch(r"\d{5}-\d{4}", compact):
        return compact[:5]
    return compact or None


# --- Google -------------------------------------------------------------------------------

def normalise_name_google(value: Any) -> str | None:
    """Google's first / last name before hashing: trimmed and lowercased, nothing removed."""
    text = _text(value)
    return None if text is None else _lower(text)


def normalise_country_google(value: Any) -> str | None:
    """Google's ``countryCode``: the two-letter ISO 3166-1 code in uppercase, not hashed."""
    text = _text(value)
    if text is None:
        return None
    code = text.upper()
    return code if re.fullmatch(r"[A-Z]{2}", code) else None


def normalise_postal_code_google(value: Any) -> str | None:
    """Google's ``postalCode``: trimmed, otherwise as written (it is not hashed)."""
    return _text(value)


# --- Meta payloads ------------------------------------------------------------------------

# Meta key -> (how to pick it from a profile, whether it is hashed).
_MetaPick = Callable[[Mapping[str, Any], int | None], str | None]


def _meta_keys() -> dict[str, tuple[_MetaPick, bool]]:
    def first(trait: str, normalise: Callable[[Any], str | None]) -> _MetaPick:
        return lambda profile, _code: _first_valid(profile.get(trait), normalise)

    def phone(profile: Mapping[str, Any], code: int | None) -> str | None:
        calling_code = _calling_code(profile.get("country"), code)
        return _first_valid(profile.get("phone"), lambda value: normalise_phone_meta(value, calling_code))

    def zip_code(profile: Mapping[str, Any], _code: int | None) -> str | None:
        country = _first_valid(profile.get("country"), normalise_country_meta)
        return _first_valid(profile.get("zip"), lambda value: normalise_zip_meta(value, country))

    return {
        "EMAIL": (first("email", normalise_email), True),
        "PHONE": (phone, True),
        "FN": (first("first_name", normalise_name_meta), True),
        "LN": (first("last_name", normalise_name_meta), True),
        "CT": (first("city", normalise_city_meta), True),
        "ST": (first("state", normalise_state_meta), True),
        "ZIP": (zip_code, True),
        "COUNTRY": (first("country", normalise_country_meta), True),
        "MADID": (first("madid", normalise_madid), False),
    }


_META_KEYS = _meta_keys()

#: Meta multi-key schema used when none is given: every key this module can fill.
META_DEFAULT_SCHEMA: tuple[str, ...] = tuple(_META_KEYS)


def _values(raw: Any) -> list[Any]:
    """A trait may hold one value or a list of them (several emails, several phones)."""
    if raw is None:
        return []
    if isinstance(raw, list | tuple):
        return list(raw)
    return [raw]


def _first_valid(raw: Any, normalise: Callable[[Any], str | None]) -> str | None:
    for candidate in _values(raw):
        normalised = normalise(candidate)
        if normalised is not None:
            return normalised
    return None


def _calling_code(country: Any, default_calling_code: int | None) -> int | None:
    """The profile's own country decides how a national phone number is read, else the default."""
    code = normalise_country_google(_first_valid(country, _text))
    if code is not None:
        calling_code = phonenumbers.country_code_for_region(code)
        if calling_code:
            return int(calling_code)
    return default_calling_code


def _check_meta_schema(schema: Sequence[str]) -> list[str]:
    keys = [key.upper() for key in schema]
    unknown = [key for key in keys if key not in _META_KEYS]
    if unknown or not keys or len(set(keys)) != len(keys):
        raise ValueError(f"Meta schema must be distinct keys from {sorted(_META_KEYS)}, not {list(schema)}")
    return keys


def meta_row(profile: Mapping[str, Any], schema: Sequence[str] = META_DEFAULT_SCHEMA, *,
             default_calling_code: int | None = None) -> list[str] | None:
    """One ``data`` row for Meta's multi-key ``schema``: hashed values, ``""`` where missing.

    Profile keys: ``email``, ``phone``, ``first_name``, ``last_name``, ``city``,
    ``state``, ``zip``, ``country``, ``madid`` (a value or a list; the first valid one is
    used). MADID is sent unhashed, every other key as its SHA-256. ``None`` when the
    profile has no usable value for any key of the schema (the row would match nobody).
    A schema with an unknown or repeated key is a configuration error and raises
    ``ValueError``.
    """
    keys = _check_meta_schema(schema)
    return _meta_row(profile, keys, default_calling_code)


def _meta_row(profile: Mapping[str, Any], keys: list[str], default_calling_code: int | None) -> list[str] | None:
    row: list[str] = []
    for key in keys:
        pick, hashed = _META_KEYS[key]
        value = pick(profile, default_calling_code)
        row.append("" if value is None else sha256_hex(value) if hashed else value)
    return row if any(row) else None


def meta_payloads(profiles: Iterable[Mapping[str, Any]], schema: Sequence[str] = META_DEFAULT_SCHEMA, *,
                  default_calling_code: int | None = None,
                  max_rows: int = META_MAX_ROWS_PER_REQUEST) -> Iterator[dict[str, Any]]:
    """``{"schema": [...], "data": [[...], ...]}`` payloads for ``/{audience_id}/users``.

    The same payload shape adds (POST) and removes (DELETE) users. Profiles without a
    usable identifier are skipped. Lazy: at most ``max_rows`` rows (Meta's 10,000 per
    request by default) are held at once, whatever the size of ``profiles``.
    """
    keys = _check_meta_schema(schema)
    if not 0 < max_rows <= META_MAX_ROWS_PER_REQUEST:
        raise ValueError(f"max_rows must be between 1 and {META_MAX_ROWS_PER_REQUEST}")
    rows: list[list[str]] = []
    for profile in profiles:
        row = _meta_row(profile, keys, default_calling_code)
        if row is None:
            continue
        rows.append(row)
        if len(rows) == max_rows:
            yield {"schema": list(keys), "data": rows}
            rows = []
    if rows:
        yield {"schema": list(keys), "data": rows}


# --- Google operations --------------------------------------------------------------------

def google_user_identifiers(profile: Mapping[str, Any], *,
                            default_calling_code: int | None = None) -> list[dict[str, Any]]:
    """The ``userIdentifiers`` of one UserData: hashed emails, hashed phones, address info.

    Every valid, distinct email (``hashedEmail``) and phone (``hashedPhoneNumber``, E.164)
    is included, then one ``addressInfo`` when first name, last name, country and postal
    code are all present (Google matches an address only on all four). Capped at
    :data:`GOOGLE_MAX_IDENTIFIERS_PER_USER`, emails first. Empty when nothing is usable.
    """
    identifiers: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for raw in _values(profile.get("email")):
        email = normalise_email(raw)
        if email is not None and ("email", email) not in seen:
            seen.add(("email", email))
            identifiers.append({"hashedEmail": sha256_hex(email)})
    calling_code = _calling_code(profile.get("country"), default_calling_code)
    for raw in _values(profile.get("phone")):
        phone = normalise_phone_e164(raw, calling_code)
        if phone is not None and ("phone", phone) not in seen:
            seen.add(("phone", phone))
            identifiers.append({"hashedPhoneNumber": sha256_hex(phone)})
    first_name = _first_valid(profile.get("first_name"), normalise_name_google)
    last_name = _first_valid(profile.get("last_name"), normalise_name_google)
    country = _first_valid(profile.get("country"), normalise_country_google)
    postal_code = _first_valid(profile.get("zip"), normalise_postal_code_google)
    if first_name and last_name and country and postal_code:
        identifiers.append({"addressInfo": {
            "hashedFirstName": sha256_hex(first_name),
            "hashedLastName": sha256_hex(last_name),
            "countryCode": country,
            "postalCode": postal_code,
        }})
    return identifiers[:GOOGLE_MAX_IDENTIFIERS_PER_USER]


def google_operations(profiles: Iterable[Mapping[str, Any]], *, remove: bool = False,
                      default_calling_code: int | None = None) -> Iterator[dict[str, Any]]:
    """One OfflineUserDataJobOperation per profile with identifiers (``create`` or ``remove``)."""
    verb = "remove" if remove else "create"
    for profile in profiles:
        identifiers = google_user_identifiers(profile, default_calling_code=default_calling_code)
        if identifiers:
            yield {verb: {"userIdentifiers": identifiers}}


def google_requests(profiles: Iterable[Mapping[str, Any]], *, remove: bool = False,
                    default_calling_code: int | None = None,
                    max_identifiers: int = GOOGLE_MAX_IDENTIFIERS_PER_REQUEST) -> Iterator[dict[str, Any]]:
    """``{"operations": [...]}`` bodies for AddOfflineUserDataJobOperations.

    Each body holds at most ``max_identifiers`` user identifiers summed over its
    operations (Google's 100,000 per request by default); an operation is never split.
    Lazy, so memory stays flat as the audience grows.
    """
    if not GOOGLE_MAX_IDENTIFIERS_PER_USER <= max_identifiers <= GOOGLE_MAX_IDENTIFIERS_PER_REQUEST:
        raise ValueError(f"max_identifiers must be between {GOOGLE_MAX_IDENTIFIERS_PER_USER} "
                         f"and {GOOGLE_MAX_IDENTIFIERS_PER_REQUEST}")
    batch: list[dict[str, Any]] = []
    count = 0
    verb = "remove" if remove else "create"
    for operation in google_operations(profiles, remove=remove, default_calling_code=default_calling_code):
        size = len(operation[verb]["userIdentifiers"])
        if count + size > max_identifiers:
            yield {"operations": batch}
            batch, count = [], 0
        batch.append(operation)
        count += size
    if batch:
        yield {"operations": batch}
