"""One JSON POST to a destination's HTTP API and what its answer means: shared by the
destinations that post one message per request (webhook, Slack).

Redirects are not followed (a redirect could move a signed request elsewhere); a refusal's
body is read up to ``max_answer`` bytes for its reason (after ``scrub``, which may remove
what must not be logged); a failure to get an answer (timeout, refused connection, TLS)
is named by its kind only: its message could carry the URL, which may hold a token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import urllib3

from cdp.activation.delivery import Outcome, classify

MAX_ANSWER = 2048  # bytes of a refusal's body kept for its reason


def failure_name(exc: BaseException) -> str:
    """The kind of a failure (the exception's class, or its cause's)."""
    inner = getattr(exc, "reason", None)
    return type(inner if isinstance(inner, BaseException) else exc).__name__


def release(response: Any) -> None:
    """Give a streamed response's connection back to the pool with nothing left unread: a
    kept-alive connection with an unread body (a 2xx answer we did not need) would make
    the next request on it fail."""
    try:
        response.drain_conn()
    finally:
        response.release_conn()


def post_json(http: Any, url: str, body: bytes, headers: Mapping[str, str],
              scrub: Callable[[str], str] = lambda text: text, max_answer: int = MAX_ANSWER) -> Outcome:
    """POST ``body`` and classify the answer (``cdp.activation.delivery.classify``)."""
    try:
        response = http.request("POST", url, body=body, headers=dict(headers), redirect=False,
                                preload_content=False)
    except urllib3.exceptions.HTTPError as exc:  # timeouts, refused connections, TLS errors
        return classify(None, error=failure_name(exc))
    try:
        answer = response.read(max_answer, decode_content=True) if response.status >= 300 else b""
    finally:
        release(response)
    text = scrub(answer.decode("utf-8", errors="replace")) if answer else ""
    return classify(response.status, dict(response.headers), text)
