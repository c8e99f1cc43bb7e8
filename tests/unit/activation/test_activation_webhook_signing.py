"""Webhook signatures: ``t=<seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, replay-safe."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.activation.webhook_signing import DEFAULT_TOLERANCE_S, sign, sign_rotation, verify

SECRET = b"whsec_test_secret"
OLD_SECRET = b"whsec_old_secret"
BODY = b'{"type":"track","event":"Audience Entered","userId":"u1"}'
T = 1_733_455_200


def test_signature_round_trips():
    header = sign(SECRET, BODY, T)
    assert verify(header, BODY, [SECRET], now=T)


def test_header_matches_a_vector_computed_independently():
    expected = hmac.new(SECRET, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, T) == f"t={T},v1={expected}"


def test_docstring_example_vector_is_correct():
    header = sign(b"whsec_example", b'{"ok":true}', 1733455200)
    assert header == "t=1733455200,v1=94f663aff235066f2b735ba2253ea084ea1acf38d638b9db923eaeec604e0bd2"


def test_tampered_body_is_rejected():
    header = sign(SECRET, BODY, T)
    assert not verify(header, BODY.replace(b"u1", b"u2"), [SECRET], now=T)
    assert not verify(header, BODY + b" ", [SECRET], now=T)


def test_tampered_timestamp_is_rejected():
    digest = sign(SECRET, BODY, T).split(",", 1)[1]
    assert not verify(f"t={T + 1},{digest}", BODY, [SECRET], now=T)


def test_wrong_secret_is_rejected():
    header = sign(SECRET, BODY, T)
    assert not verify(header, BODY, [b"another-secret"], now=T)


def test_rotation_header_verifies_with_either_secret():
    header = sign_rotation([SECRET, OLD_SECRET], BODY, T)
    assert header.count("v1=") == 2
    assert verify(header, BODY, [SECRET], now=T)
    assert verify(header, BODY, [OLD_SECRET], now=T)
    assert not verify(header, BODY, [b"neither"], now=T)


def test_receiver_holding_two_secrets_accepts_a_sender_using_either():
    assert verify(sign(OLD_SECRET, BODY, T), BODY, [SECRET, OLD_SECRET], now=T)
    assert verify(sign(SECRET, BODY, T), BODY, [SECRET, OLD_SECRET], now=T)


def test_a_single_secret_passed_bare_still_verifies():
    assert verify(sign(SECRET, BODY, T), BODY, SECRET, now=T)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_S, -DEFAULT_TOLERANCE_S])
def test_timestamp_exactly_at_the_tolerance_is_accepted(offset):
    # offset > 0: the signature is old (stale); < 0: it claims to come from the future.
    assert verify(sign(SECRET, BODY, T), BODY, [SECRET], now=T + offset)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_S + 1, -(DEFAULT_TOLERANCE_S + 1)])
def test_timestamp_one_second_beyond_the_tolerance_is_rejected(offset):
    assert not verify(sign(SECRET, BODY, T), BODY, [SECRET], now=T + offset)


def test_custom_tolerance_is_honoured():
    header = sign(SECRET, BODY, T)
    assert verify(header, BODY, [SECRET], now=T + 30, tolerance_s=30)
    assert not verify(header, BODY, [SECRET], now=T + 31, tolerance_s=30)


def test_unknown_schemes_and_spaces_are_tolerated():
    header = sign(SECRET, BODY, T).replace(",", " , ")
    assert verify(f"v0=abc, {header}, v2=whatever", BODY, [SECRET], now=T)


@pytest.mark.parametrize("header", [
    "",
    ",,,",
    "t=",
    f"t={T}",
    "v1=" + "0" * 64,
    f"t={T},v1=",
    f"t={T},v1=zz",
    f"t={T},t={T},v1=" + "0" * 64,
    "t=-5,v1=" + "0" * 64,
    "t=1e9,v1=" + "0" * 64,
    "t=\u0661\u0662\u0663,v1=" + "0" * 64,  # Arabic-Indic digits: isdigit() but not a timestamp
    "t=" + "9" * 5000 + ",v1=" + "0" * 64,  # beyond Python's int() digit limit
    "garbage",
])
def test_malformed_headers_are_rejected_without_raising(header):
    assert verify(header, BODY, [SECRET], now=T) is False


def test_uppercase_hex_digest_is_rejected():
    header = sign(SECRET, BODY, T)
    stamp, digest = header.split(",")
    assert not verify(f"{stamp},{digest.upper().replace('V1=', 'v1=')}", BODY, [SECRET], now=T)


@pytest.mark.parametrize("header, body", [(None, BODY), (b"t=1,v1=00", BODY), (123, BODY),
                                          ("t=1,v1=00", "not bytes"), ("t=1,v1=00", None)])
def test_wrong_types_are_rejected_without_raising(header, body):
    assert verify(header, body, [SECRET], now=T) is False


def test_empty_or_non_bytes_secrets_never_match():
    header = sign(SECRET, BODY, T)
    assert not verify(header, BODY, [b"", "whsec_test_secret"], now=T)  # type: ignore[list-item]
    assert not verify(header, BODY, [], now=T)


@pytest.mark.parametrize("secrets, timestamp", [([], T), ([b""], T), ([SECRET], -1), ([SECRET], 1.5),
                                                (SECRET, T)])
def test_signing_refuses_bad_configuration(secrets, timestamp):
    with pytest.raises(ValueError):
        sign_rotation(secrets, BODY, timestamp)


@settings(max_examples=300, deadline=None)
@given(header=st.text(), body=st.binary())
def test_arbitrary_text_never_raises(header, body):
    assert verify(header, body, [SECRET], now=T) in (True, False)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.sampled_from(["t=", "v1=", ",", "=", " ", str(T), "0" * 64, "f" * 64, "x"]),
                      max_size=12))
def test_header_shaped_noise_never_raises(parts):
    assert verify("".join(parts), BODY, [SECRET], now=T) in (True, False)


@settings(max_examples=50, deadline=None)
@given(body=st.binary(max_size=512), timestamp=st.integers(min_value=0, max_value=10**11))
def test_any_body_and_time_round_trips(body, timestamp):
    assert verify(sign(SECRET, body, timestamp), body, [SECRET], now=timestamp)


def test_receiver_example_in_the_docstring_works():
    import textwrap
    import time

    from cdp.activation import webhook_signing

    doc = webhook_signing.__doc__ or ""
    example = doc.split("for a Flask-style request::", 1)[1].split("    # is_authentic(", 1)[0]
    namespace: dict = {}
    exec(textwrap.dedent(example), namespace)
    now = int(time.time())
    assert namespace["is_authentic"](sign_rotation([OLD_SECRET, SECRET], BODY, now), BODY, SECRET)
    assert not namespace["is_authentic"](sign(SECRET, BODY, now), BODY + b"x", SECRET)
    assert not namespace["is_authentic"](sign(SECRET, BODY, now - 301), BODY, SECRET)
