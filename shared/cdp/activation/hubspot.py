"""The HubSpot destination: contacts upserted by email with the CRM v3 batch API.

``POST {base}/crm/v3/objects/contacts/batch/upsert`` with ``Authorization: Bearer <private
app token>`` (the token read by name at run time, ``HubSpotSettings.access_token_secret_name``)
and ``{"inputs": [{"idProperty": "email", "id": "<email>", "properties": {...}}]}``, at
most 100 inputs a request (HubSpot's batch limit). A contact that does not exist is
created, one that does is updated; sending the same input twice sets the same values, so
a retried request is harmless.

Who: the contact's email, the profile's first ``identifiers["email"]`` (normalised), else
its ``traits["email"]`` (trimmed, lowercased). A message without a profile, or whose
profile has no email that looks like one, is a permanent "no usable identifier" and is
not sent. Two messages for one email never share a request (HubSpot refuses duplicate
ids in a batch): the later one goes in a later request, so their order is kept.

What: ``properties`` is the profile's ``fields`` (the destination's field mapping applied
to the traits; values as HubSpot's text form: ``true``/``false``, numbers as written,
lists ``;``-joined, objects as JSON) plus ``HubSpotSettings.membership_property``: the
audiences the contact is in, ``;``-separated (HubSpot's multiple-checkbox format; the
property is created by the operator, with the audience ids as its options). It overrides
a mapped field of the same name.

The membership property is a whole value: HubSpot's upsert has no "add to a multi-value
property", so every change writes the contact's full list. That list comes from an
addition to the PROFILE dict contract (docs/activation.md, "Message bodies"):

    "memberships": ["pro", "vip"]   # optional: the audience ids the profile is in now

The destination Lambda fills it when it reads the profile; it is the current state at
send time, so a later change still queued only repeats it. **Without it** the
property is a guess: the message's audience for an entry, empty for an exit (which
drops the contact's other audiences from the property until their next change); an
event message without it leaves the property unchanged (not sent).

Answers: a whole request's answer decides for all its inputs (``cdp.activation.delivery
.classify``: 401/403 and other 4xx permanent; 429, HubSpot's rate limits, retried after
``Retry-After`` if given, else on the delivery policy's backoff; 5xx retried). A 2xx
answer (200, 201, 207 Multi-Status) with an ``errors`` array (HubSpot's documented batch
response: each error has ``status``, ``category``, ``message`` and a ``context`` of
string lists) fails the inputs whose email appears in an error's ``context`` (category
``RATE_LIMITS`` retried, any other permanent); an error naming no input of the request
fails every input not named by another error (a resend is harmless); a batch answered
as ``CANCELED`` with no errors is retried. Reasons carry
HubSpot's category and message with email addresses and the token removed: never
personal data or credentials.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import urllib3

from cdp.activation.delivery import Destination, OutboundMessage, Outcome, Verdict, classify
from cdp.activation.destinations import DestinationConfig, HubSpotSettings
from cdp.activation.http_post import failure_name, release

DEFAULT_BASE_URL = "https://api.hubapi.com"
BASE_URL_ENV = "CDP_HUBSPOT_API_URL"
UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"
MAX_INPUTS = 100  # HubSpot's batch limit
USER_AGENT = "cdp-hubspot/1"
MAX_ANSWER = 4 * 1024 * 1024  # bytes of an answer read (100 results fit easily)
RETRYABLE_CATEGORIES = frozenset({"RATE_LIMITS"})
NO_IDENTIFIER = "no usable identifier"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_EMAIL_ANYWHERE = re.compile(r"[^@\s\"'<>,;:\[\]{}()]+@[^@\s\"'<>,;:\[\]{}()]+")


def contact_email(profile: Mapping[str, Any] | None) -> str | None:
    """The email a contact is upserted by: the first normalised email identifier, else the
    ``email`` trait, trimmed and lowercased; None if there is none that looks like an email."""
    if not isinstance(profile, Mapping):
        return None
    identifiers = profile.get("identifiers")
    emails = identifiers.get("email") if isinstance(identifiers, Mapping) else None
    candidates = list(emails) if isinstance(emails, list | tuple) else []
    traits = profile.get("traits")
    if isinstance(traits, Mapping):
        candidates.append(traits.get("email"))
    for candidate in candidates:
        if isinstance(candidate, str):
            email = candidate.strip().lower()
            if _EMAIL.match(email):
                return email
    return None


def property_value(value: Any) -> str:
    """A value in HubSpot's text form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return ";".join(property_value(item) for item in value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def membership_value(body: Mapping[str, Any]) -> str | None:
    """The membership property's value for a message (see the module docstring); None:
    leave the property alone."""
    profile = body.get("profile")
    memberships = profile.get("memberships") if isinstance(profile, Mapping) else None
    if isinstance(memberships, list | tuple):
        return ";".join(sorted({m for m in memberships if isinstance(m, str) and m}))
    if body.get("kind") == "audience_membership":
        audience = body.get("audience_id")
        return audience if body.get("transition") == "entered" and isinstance(audience, str) else ""
    return None


def contact_input(body: Mapping[str, Any], membership_property: str) -> dict[str, Any] | None:
    """The batch upsert input for a message; None when it has no usable identifier."""
    profile = body.get("profile")
    email = contact_email(profile if isinstance(profile, Mapping) else None)
    if email is None or not isinstance(profile, Mapping):
        return None
    fields = profile.get("fields")
    properties = {str(k): property_value(v) for k, v in fields.items()} if isinstance(fields, Mapping) else {}
    membership = membership_value(body)
    if membership is not None:
        properties[membership_property] = membership
    return {"idProperty": "email", "id": email, "properties": properties}


def _chunks(inputs: list[tuple[int, dict[str, Any]]], size: int) -> list[list[tuple[int, dict[str, Any]]]]:
    """Requests of at most ``size`` inputs, no email twice in one; an email's inputs stay in order."""
    chunks: list[list[tuple[int, dict[str, Any]]]] = []
    pending = inputs
    while pending:
        chunk: list[tuple[int, dict[str, Any]]] = []
        later: list[tuple[int, dict[str, Any]]] = []
        seen: set[str] = set()
        for item in pending:
            email = item[1]["id"]
            if len(chunk) < size and email not in seen:
                chunk.append(item)
            else:
                later.append(item)
            seen.add(email)  # also for a deferred one: a later input of its email waits behind it
        chunks.append(chunk)
        pending = later
    return chunks


@dataclass
class HubSpotDestination:
    access_token: str = field(repr=False)
    membership_property: str = "cdp_audiences"
    base_url: str = DEFAULT_BASE_URL
    batch_size: int = MAX_INPUTS
    timeout_s: float = 30.0
    http: Any = None  # a urllib3.PoolManager (one per warm function)

    def __post_init__(self) -> None:
        if not self.access_token.strip():
            raise ValueError("the HubSpot access token secret is empty")
        if not 1 <= self.batch_size <= MAX_INPUTS:
            raise ValueError(f"batch_size: 1 to {MAX_INPUTS} (HubSpot's batch limit)")
        self.base_url = self.base_url.rstrip("/")
        if self.http is None:
            self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=self.timeout_s))

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """Upsert the messages' contacts, at most ``batch_size`` a request; one outcome per message."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        inputs: list[tuple[int, dict[str, Any]]] = []
        for n, message in enumerate(messages):
            made = contact_input(message.body, self.membership_property)
            if made is None:
                outcomes[n] = Outcome("permanent", NO_IDENTIFIER)
            else:
                inputs.append((n, made))
        for chunk in _chunks(inputs, self.batch_size):
            for (n, _), outcome in zip(chunk, self._upsert_isolating([item for _, item in chunk]), strict=True):
                outcomes[n] = outcome
        return [o if o is not None else Outcome("retry", "not sent") for o in outcomes]

    def _upsert_isolating(self, inputs: list[dict[str, Any]]) -> list[Outcome]:
        """Upsert; a request refused as a whole with a 400 (HubSpot refuses a batch for one
        invalid input) is split in halves and each sent again, so only the invalid inputs
        end in the dead-letter queue: at most about 2 log2(n) more requests, only then."""
        outcomes = self._upsert(inputs)
        if len(inputs) > 1 and all(o.verdict == "permanent" and o.reason.startswith("HTTP 400") for o in outcomes):
            half = len(inputs) // 2
            return self._upsert_isolating(inputs[:half]) + self._upsert_isolating(inputs[half:])
        return outcomes

    def _upsert(self, inputs: list[dict[str, Any]]) -> list[Outcome]:
        body = json.dumps({"inputs": inputs}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {"Authorization": f"Bearer {self.access_token}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": USER_AGENT}
        try:
            response = self.http.request("POST", self.base_url + UPSERT_PATH, body=body, headers=headers,
                                         redirect=False, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:  # timeouts, refused connections, TLS errors
            return [classify(None, error=failure_name(exc))] * len(inputs)
        try:
            answer = response.read(MAX_ANSWER, decode_content=True)
        finally:
            release(response)
        parsed = _json(answer)
        if not 200 <= response.status < 300:
            description = self._describe(parsed) if isinstance(parsed, Mapping) else ""
            return [classify(response.status, dict(response.headers), description)] * len(inputs)
        if isinstance(parsed, Mapping):
            return self._per_input(parsed, inputs)
        if response.status == 207:  # some inputs failed, and the answer does not say which
            return [Outcome("retry", "HTTP 207 without a readable errors list")] * len(inputs)
        return [Outcome("delivered")] * len(inputs)

    def _per_input(self, answer: Mapping[str, Any], inputs: list[dict[str, Any]]) -> list[Outcome]:
        """Outcomes from a 2xx answer's ``errors`` array (module docstring)."""
        errors = [e for e in answer.get("errors") or [] if isinstance(e, Mapping)]
        index = {item["id"]: n for n, item in enumerate(inputs)}
        outcomes: list[Outcome | None] = [None] * len(inputs)
        unplaced: Outcome | None = None
        for error in errors:
            outcome = self._error_outcome(error)
            named = [index[value] for value in _context_values(error) if value in index]
            for n in named:
                if outcomes[n] is None or outcome.verdict == "permanent":
                    outcomes[n] = outcome
            if not named and unplaced is None:
                unplaced = outcome
        if unplaced is None and not errors and answer.get("status") == "CANCELED":
            unplaced = Outcome("retry", "HubSpot batch status CANCELED")
        return [o if o is not None else (unplaced or Outcome("delivered")) for o in outcomes]

    def _error_outcome(self, error: Mapping[str, Any]) -> Outcome:
        category = str(error.get("category") or "")
        status = str(error.get("status") or "")
        verdict: Verdict = "retry" if category in RETRYABLE_CATEGORIES or status.startswith("5") else "permanent"
        return Outcome(verdict, f"HubSpot batch error: {self._describe(error)}")

    def _describe(self, error: Mapping[str, Any]) -> str:
        """``category: message`` of a HubSpot error, without emails or the token."""
        parts = [str(error.get(key)) for key in ("category", "message") if error.get(key)]
        text = _EMAIL_ANYWHERE.sub("[email]", ": ".join(parts))
        return text.replace(self.access_token, "[token]")[:300]


def _json(answer: bytes) -> Any:
    try:
        return json.loads(answer) if answer else None
    except ValueError:
        return None


def _context_values(error: Mapping[str, Any]) -> list[str]:
    """The lowercased strings of an error's ``context`` and of its detail errors' contexts."""
    contexts = [error.get("context")]
    contexts += [detail.get("context") for detail in error.get("errors") or [] if isinstance(detail, Mapping)]
    values: list[str] = []
    for context in contexts:
        if not isinstance(context, Mapping):
            continue
        for value in context.values():
            items = value if isinstance(value, list | tuple) else [value]
            values += [item.strip().lower() for item in items if isinstance(item, str)]
    return values


def build(config: DestinationConfig, secret: Callable[[str], str], aws: Callable[[str], Any]) -> HubSpotDestination:
    """The destination for a ``hubspot`` configuration: the token read from its secret, the
    API host from ``CDP_HUBSPOT_API_URL`` if set (the local stack's fake server)."""
    settings = config.settings
    if not isinstance(settings, HubSpotSettings):
        raise TypeError(f"destination {config.id!r} is not a hubspot destination")
    return HubSpotDestination(access_token=secret(settings.access_token_secret_name).strip(),
                              membership_property=settings.membership_property,
                              base_url=os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL,
                              batch_size=min(config.effective_batch_size, MAX_INPUTS))


if TYPE_CHECKING:  # the one destination interface, checked by mypy
    _INTERFACE: Destination = HubSpotDestination(access_token="x")
