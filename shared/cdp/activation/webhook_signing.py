"""Replay-safe HMAC-SHA256 signatures for webhook deliveries.

Every webhook delivery carries one header (``SIGNATURE_HEADER``) of the form (here for
the secret ``whsec_example``, the body ``{"ok":true}`` and the time 1733455200)::

    t=1733455200,v1=94f663aff235066f2b735ba2253ea084ea1acf38d638b9db923eaeec604e0bd2

- ``t`` is the time of signing, in whole Unix seconds (decimal digits only).
- ``v1`` is the lowercase hex HMAC-SHA256, keyed with the destination's secret, of the
  *signed payload*: the ``t`` value exactly as it appears in the header, one ASCII dot,
  then the raw request body bytes (``b"1733455200." + body``). The body is hashed as
  received: never re-serialise the JSON before verifying.
- While a secret is being rotated the header carries one ``v1`` per active secret
  (``t=...,v1=<new>,v1=<old>``); a receiver accepts the delivery if any ``v1`` matches
  any secret it holds, so either side can switch first.
- Other keys (a future ``v2``) are ignored, so a scheme can be added without breaking
  receivers.

Binding the timestamp into the signed payload is what makes a captured request
unusable later: a receiver rejects a ``t`` further than a few minutes (default 300 s)
from its own clock, in either direction, and the attacker cannot change ``t`` without
the secret. Within that window a receiver that must not act twice should also drop
repeated delivery ids (the body's ``messageId``).

A receiver in any language needs only HMAC-SHA256 and a constant-time comparison; in
Python, for a Flask-style request::

    import hashlib, hmac, time

    def is_authentic(header: str, body: bytes, secret: bytes, tolerance_s: int = 300) -> bool:
        items = [part.split("=", 1) for part in header.split(",") if "=" in part]
        stamps = [value for key, value in items if key.strip() == "t"]
        candidates = [value.strip() for key, value in items if key.strip() == "v1"]
        stamp = stamps[0].strip() if len(stamps) == 1 else ""
        if not (stamp.isascii() and stamp.isdigit()):
            return False
        if abs(time.time() - int(stamp)) > tolerance_s:
            return False
        expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return any(hmac.compare_digest(expected, candidate) for candidate in candidates)

    # is_authentic(request.headers["X-CDP-Signature"], request.get_data(), SECRET)

``verify`` below is the same check, hardened: it never raises on any header or body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

SIGNATURE_HEADER = "X-CDP-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300

# A hex SHA-256 digest; longer timestamps than this many digits are not a time (and
# int() of a huge digit string is slow, or refused by Python's int-size limit).
_DIGEST_HEX_LEN = 64
_MAX_TIMESTAMP_DIGITS = 12
_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")


def _signed_payload(timestamp: str, body: bytes) -> bytes:
    return timestamp.encode("ascii") + b"." + body


def _digest(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, _signed_payload(timestamp, body), hashlib.sha256).hexdigest()


def sign_rotation(secrets: Sequence[bytes], body: bytes, timestamp: int) -> str:
    """The signature header value with one ``v1`` per secret, in the given order (during a
    rotation: the new secret and the old one)."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("timestamp must be a non-negative whole number of Unix seconds")
    if isinstance(secrets, bytes | bytearray) or not secrets:
        raise ValueError("secrets must be a non-empty sequence of byte strings")
    if any(not isinstance(secret, bytes | bytearray) or not secret for secret in secrets):
        raise ValueError("every secret must be a non-empty byte string")
    stamp = str(timestamp)
    signatures = ",".join(f"{SCHEME}={_digest(bytes(secret), stamp, bytes(body))}" for secret in secrets)
    return f"t={stamp},{signatures}"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header value ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
    (the scheme is described in this module's docstring)."""
    return sign_rotation([secret], body, timestamp)


def _parse(header: str) -> tuple[str, list[str]] | None:
    """``(timestamp digits, v1 candidates)``, or None if the header is malformed: no ``t``,
    more than one ``t``, a ``t`` that is not decimal digits, or no well-formed ``v1``."""
    stamps: list[str] = []
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "t":
            stamps.append(value)
        elif key == SCHEME and len(value) == _DIGEST_HEX_LEN and set(value) <= _HEX:
            candidates.append(value)
    if len(stamps) != 1 or not candidates:
        return None
    stamp = stamps[0]
    # str.isdigit() accepts non-ASCII digits ("١٢٣"); only ASCII is a valid timestamp.
    if not stamp or len(stamp) > _MAX_TIMESTAMP_DIGITS or not set(stamp) <= _DIGITS:
        return None
    return stamp, candidates


def verify(header: str | None, body: bytes, secrets: Iterable[bytes], now: float,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """Whether ``header`` is a valid signature of ``body`` by one of ``secrets``, made
    within ``tolerance_s`` seconds of ``now`` (inclusive, in either direction: a
    timestamp from the future beyond the tolerance is refused like a stale one).

    Returns False, never raises, on any malformed header or body. Digests are compared in
    constant time (``hmac.compare_digest``); every candidate is checked against every
    secret, so a rotation's old and new secrets both verify.
    """
    if not isinstance(header, str) or not isinstance(body, bytes | bytearray | memoryview):
        return False
    parsed = _parse(header)
    if parsed is None:
        return False
    stamp, candidates = parsed
    if abs(now - int(stamp)) > tolerance_s:
        return False
    if isinstance(secrets, bytes | bytearray):
        secrets = [bytes(secrets)]  # one secret passed bare: iterating it would give ints
    payload = bytes(body)
    matched = False
    for secret in secrets:
        if not isinstance(secret, bytes | bytearray) or not secret:
            continue
        expected = _digest(bytes(secret), stamp, payload)
        for candidate in candidates:
            # No early exit: the time taken does not depend on which candidate matched.
            matched |= hmac.compare_digest(expected, candidate)
    return matched
