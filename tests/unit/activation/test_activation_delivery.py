"""The delivery policy: what an answer means and when to try again."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdp.activation.delivery import Outcome, RetryPolicy, classify, give_up_reason, parse_retry_after

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    assert classify(status).delivered


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_throttling_timeouts_and_server_errors_are_retried(status: int) -> None:
    assert classify(status, body="busy").verdict == "retry"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422, 501, 505])
def test_other_client_errors_go_to_the_dead_letter_queue_with_the_reason(status: int) -> None:
    outcome = classify(status, body='{"error": "invalid field email"}')
    assert outcome.verdict == "permanent"
    assert outcome.reason.startswith(f"HTTP {status}: ") and "invalid field email" in outcome.reason


def test_no_answer_is_retried_with_the_error_as_reason() -> None:
    outcome = classify(None, error="connection refused")
    assert outcome.verdict == "retry" and outcome.reason == "no answer: connection refused"


def test_a_long_answer_is_cut_and_flattened() -> None:
    outcome = classify(400, body="line\n" * 500)
    assert len(outcome.reason) == 300 and "\n" not in outcome.reason and outcome.reason.endswith("…")


def test_retry_after_in_seconds_or_as_an_http_date_is_read() -> None:
    assert classify(429, {"Retry-After": "120"}).retry_after_s == 120
    assert classify(503, {"retry-after": "Sun, 06 Dec 2026 12:01:30 GMT"}, now=NOW).retry_after_s == 90
    assert parse_retry_after("Sun, 06 Dec 2026 11:00:00 GMT", NOW) == 0  # in the past: now
    assert parse_retry_after("soon", NOW) is None and parse_retry_after(None, NOW) is None
    assert parse_retry_after("²", NOW) is None and parse_retry_after("١٢", NOW) is None  # not ASCII digits
    assert classify(400, {"Retry-After": "5"}).retry_after_s is None  # not retried anyway


@given(st.text(max_size=40))
def test_any_retry_after_header_is_read_without_raising(value: str) -> None:
    seconds = parse_retry_after(value, NOW)
    assert seconds is None or seconds >= 0


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap() -> None:
    policy = RetryPolicy(base_s=5, cap_s=900)
    retry = Outcome("retry", "HTTP 500")
    for attempt in range(12):
        ceiling = min(900, 5 * 2**attempt)
        delays = [policy.next_delay(attempt, retry, NOW, NOW, random.Random(seed)) for seed in range(200)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        assert max(d for d in delays if d is not None) > ceiling * 0.9  # spread over the whole range


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    policy = RetryPolicy(cap_s=900)
    assert policy.next_delay(0, Outcome("retry", "429", 60.0), NOW, NOW) == 60.0
    assert policy.next_delay(0, Outcome("retry", "429", 7200.0), NOW, NOW) == 900.0


def test_the_window_ends_the_retries() -> None:
    policy = RetryPolicy(window=timedelta(hours=4))
    retry = Outcome("retry", "HTTP 503", 600.0)
    first = NOW - timedelta(hours=4)
    assert policy.next_delay(5, retry, first, NOW) is None  # exactly at the end: give up
    assert policy.next_delay(5, retry, first + timedelta(minutes=5), NOW) is None  # would end first
    assert policy.next_delay(5, retry, first + timedelta(minutes=11), NOW) == 600.0
    assert policy.next_delay(0, Outcome("permanent", "HTTP 400"), NOW, NOW) is None


def test_the_dead_letter_reason_says_why() -> None:
    assert give_up_reason(Outcome("permanent", "HTTP 401: bad token"), 1, timedelta(hours=4)) == \
        "permanent failure: HTTP 401: bad token"
    assert give_up_reason(Outcome("retry", "HTTP 503"), 37, timedelta(hours=4)) == \
        "retry window of 4 h exhausted after 37 attempt(s); last: HTTP 503"
