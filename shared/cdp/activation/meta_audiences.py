"""The Meta Custom Audiences destination: audience entries and exits as customer-file users.

An entry adds the person to the Meta custom audience mapped to the CDP audience
(``POST https://graph.facebook.com/{version}/{custom_audience_id}/users``), an exit
removes them (``DELETE`` on the same path, with the same parameters). Both take
``payload``, a JSON ``{"schema": [...], "data": [[...], ...]}`` of hashed rows
(``cdp.activation.ad_identifiers``: Meta's normalisation and SHA-256), at most 10,000
rows a request as Meta's "Custom Audience Users" reference says.

Authentication: the ``access_token`` parameter, sent in the form-encoded body next to
``payload`` as Meta's examples do (``curl -F 'payload=...' -F 'access_token=...'``), so it
never appears in a URL or an access log. (The Graph API also accepts
``Authorization: Bearer``; the documented parameter is used.) With the app secret
configured (``app_secret_name``), every request also carries ``appsecret_proof``, the
hex HMAC-SHA256 of the access token keyed with the app secret (Graph API "Securing
Requests"), which an app with "Require App Secret" turned on demands of every server call:
a stolen token alone is then useless.

Answers: a request's answer decides every message whose row it carried. Meta's error body
is ``{"error": {"code", "error_subcode", "type", "message", ...}}``; the code decides
(Graph API "Handling Errors" guide, Marketing API error reference and rate-limiting
page): throttles (4, 17, 32, 341, 613, and the business-use-case limits 80000-80014,
80003 being custom audiences) and temporary failures (1 unknown, 2 service) are retried;
an invalid or expired token (190, 102), a missing permission (10, 200-299) or an invalid
parameter (100: a wrong audience id, a flagged audience) never succeeds as it is and is
dead-lettered. Other answers go through ``cdp.activation.delivery.classify``. Reasons
carry Meta's codes and short message with any URL removed; never the token or a row.

A message without a usable identifier (no profile, or nothing Meta matches on) is
dead-lettered at once with the reason "no usable identifier".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import urllib3

from cdp.activation.ad_identifiers import META_DEFAULT_SCHEMA, META_MAX_ROWS_PER_REQUEST, meta_row
from cdp.activation.delivery import Destination, OutboundMessage, Outcome, Verdict, classify
from cdp.activation.destinations import DestinationConfig, MetaCustomAudiencesSettings
from cdp.activation.http_post import failure_name, release

GRAPH_URL = "https://graph.facebook.com"
API_URL_ENV = "CDP_META_API_URL"
AUDIENCE_IDS_ENV = "CDP_META_AUDIENCE_IDS"
USER_AGENT = "cdp-meta-audiences/1"
MAX_ANSWER = 4096  # bytes of an answer kept to read its error
NO_IDENTIFIER = "no usable identifier"

# Graph API error codes (see the module docstring).
RETRY_CODES = frozenset({1, 2, 4, 17, 32, 341, 613})
RATE_LIMIT_CODES = range(80000, 80015)  # business-use-case rate limits (80003: custom audiences)
PERMANENT_CODES = frozenset({10, 100, 102, 190}) | frozenset(range(200, 300))

_URL = re.compile(r"https?://\S+")

# Where each key of an ad-platform profile (``cdp.activation.ad_identifiers``) is found in
# a message's profile: identifiers first (already normalised by identity resolution), then
# traits in the spellings Segment's spec and this project use.
_IDENTIFIER_KEYS: dict[str, tuple[str, ...]] = {
    "email": ("email",),
    "phone": ("phone",),
    "madid": ("ios.idfa", "android.idfa"),
}
_TRAIT_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "email": (("email",),),
    "phone": (("phone",),),
    "first_name": (("first_name",), ("firstName",)),
    "last_name": (("last_name",), ("lastName",)),
    "city": (("city",), ("address", "city")),
    "state": (("state",), ("address", "state")),
    "zip": (("zip",), ("postal_code",), ("postalCode",), ("address", "postalCode"), ("address", "postal_code")),
    "country": (("country",), ("address", "country")),
}
AD_PROFILE_KEYS = ("email", "phone", "first_name", "last_name", "city", "state", "zip", "country", "madid")


def ad_profile(profile: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ad-platform view of a message's profile: ``email``, ``phone``, ``first_name``,
    ``last_name``, ``city``, ``state``, ``zip``, ``country``, ``madid``, each a list of
    candidate values, best first.

    Mapped fields (``config.field_mapping`` applied, ``profile["fields"]``) under those
    names come first, then the profile's normalised identifiers, then its traits
    (``first_name`` or ``firstName``, ``address.postalCode`` ...). Shared by the Meta and
    Google destinations.
    """
    if not profile:
        return {}
    fields = _mapping(profile.get("fields"))
    identifiers = _mapping(profile.get("identifiers"))
    traits = _mapping(profile.get("traits"))
    view: dict[str, Any] = {}
    for key in AD_PROFILE_KEYS:
        values: list[Any] = []
        values.extend(_as_list(fields.get(key)))
        for kind in _IDENTIFIER_KEYS.get(key, ()):
            values.extend(_as_list(identifiers.get(kind)))
        for path in _TRAIT_PATHS.get(key, ()):
            values.extend(_as_list(_dig(traits, path)))
        if values:
            view[key] = values
    return view


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _dig(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = data
    for part in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def membership_change(body: Mapping[str, Any]) -> tuple[str, bool] | None:
    """``(audience_id, entered)`` of an audience-membership message, else None."""
    if body.get("kind") != "audience_membership":
        return None
    audience = body.get("audience_id")
    transition = body.get("transition")
    if not isinstance(audience, str) or not audience or transition not in ("entered", "exited"):
        return None
    return audience, transition == "entered"


@dataclass
class MetaCustomAudiencesDestination:
    """Adds and removes people in Meta custom audiences (see the module docstring)."""

    access_token: str
    app_secret: str | None = None  # when set, requests carry appsecret_proof
    api_version: str = "v26.0"
    # CDP audience id -> Meta custom audience id; an audience not listed uses its own id.
    audience_ids: Mapping[str, str] = field(default_factory=dict)
    schema: Sequence[str] = META_DEFAULT_SCHEMA
    default_calling_code: int | None = None
    max_rows: int = META_MAX_ROWS_PER_REQUEST
    base_url: str = GRAPH_URL
    timeout_s: float = 60.0
    http: Any = None  # a urllib3.PoolManager (one per warm function)

    def __post_init__(self) -> None:
        if not self.access_token:
            raise ValueError("a Meta destination needs an access token")
        if not 0 < self.max_rows <= META_MAX_ROWS_PER_REQUEST:
            raise ValueError(f"max_rows must be between 1 and {META_MAX_ROWS_PER_REQUEST}")
        meta_row({}, self.schema)  # refuses an unknown or repeated key now, not at send time
        self.schema = [key.upper() for key in self.schema]
        if self.http is None:
            self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=self.timeout_s))

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """One outcome per message, in order: each (Meta audience, add or remove) group is
        sent in requests of at most ``max_rows`` rows; a request's answer decides its rows."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        groups: dict[tuple[str, bool], list[tuple[int, list[str]]]] = {}
        for n, message in enumerate(messages):
            change = membership_change(message.body)
            if change is None:
                outcomes[n] = Outcome("permanent", "not an audience membership change")
                continue
            audience, entered = change
            row = meta_row(ad_profile(message.body.get("profile")), self.schema,
                           default_calling_code=self.default_calling_code)
            if row is None:
                outcomes[n] = Outcome("permanent", NO_IDENTIFIER)
                continue
            meta_id = self.audience_ids.get(audience, audience)
            groups.setdefault((meta_id, entered), []).append((n, row))
        for (meta_id, entered), rows in groups.items():
            for start in range(0, len(rows), self.max_rows):
                chunk = rows[start:start + self.max_rows]
                outcome = self._request("POST" if entered else "DELETE", meta_id, [row for _, row in chunk])
                for n, _ in chunk:
                    outcomes[n] = outcome
        return [o if o is not None else Outcome("retry", "not sent") for o in outcomes]

    def _request(self, method: str, meta_id: str, rows: list[list[str]]) -> Outcome:
        url = f"{self.base_url.rstrip('/')}/{quote(self.api_version, safe='')}/{quote(meta_id, safe='')}/users"
        payload = json.dumps({"schema": list(self.schema), "data": rows}, separators=(",", ":"))
        form = {"payload": payload, "access_token": self.access_token}
        if self.app_secret:
            form["appsecret_proof"] = appsecret_proof(self.access_token, self.app_secret)
        body = urlencode(form).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT}
        try:
            response = self.http.request(method, url, body=body, headers=headers, redirect=False,
                                         preload_content=False)
        except urllib3.exceptions.HTTPError as exc:  # timeouts, refused connections, TLS errors
            return classify(None, error=failure_name(exc))
        try:
            answer = response.read(MAX_ANSWER, decode_content=True) if response.status >= 300 else b""
        finally:
            release(response)
        if 200 <= response.status < 300:
            return Outcome("delivered")
        return meta_error_outcome(response.status, dict(response.headers), answer.decode("utf-8", errors="replace"))


def appsecret_proof(access_token: str, app_secret: str) -> str:
    """Graph API's ``appsecret_proof``: HMAC-SHA256 of the token, keyed with the app secret, in hex."""
    return hmac.new(app_secret.encode("utf-8"), access_token.encode("utf-8"), hashlib.sha256).hexdigest()


def meta_error_outcome(status: int, headers: Mapping[str, str], text: str) -> Outcome:
    """What a Graph API refusal means: by Meta's error code when the body has one, else by
    the HTTP status (``classify``)."""
    error = _graph_error(text)
    if error is None:
        return classify(status, headers, _URL.sub("<url>", text))
    code = error.get("code")
    subcode = error.get("error_subcode")
    message = _URL.sub("<url>", str(error.get("message") or ""))
    reason = f"Meta error {code}" + (f"/{subcode}" if subcode is not None else "") + (f": {message}" if message else "")
    fallback = classify(status, headers, "")
    verdict: Verdict
    if isinstance(code, int) and (code in RETRY_CODES or code in RATE_LIMIT_CODES):
        verdict = "retry"
    elif isinstance(code, int) and code in PERMANENT_CODES:
        verdict = "permanent"
    else:
        verdict = fallback.verdict
    return Outcome(verdict, " ".join(reason.split())[:300],
                   fallback.retry_after_s if verdict == "retry" else None)


def _graph_error(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def mapping_from_env(name: str, destination_id: str) -> dict[str, str]:
    """An audience-id mapping from a JSON environment variable: either
    ``{"<cdp audience>": "<platform id>"}`` or, for several destinations of one type,
    ``{"<destination id>": {"<cdp audience>": "<platform id>"}}``. Unset: empty."""
    raw = os.environ.get(name)
    if not raw:
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{name} must be a JSON object")
    scoped = data.get(destination_id)
    entries: Iterable[tuple[Any, Any]] = scoped.items() if isinstance(scoped, dict) else data.items()
    return {str(k): str(v) for k, v in entries if isinstance(v, str | int) and not isinstance(v, bool)}


def build(config: DestinationConfig, secret: Callable[[str], str], aws: Callable[[str], Any]) -> Destination:
    """The destination for ``config`` (the Lambda registry's factory). The Meta audience
    ids come from the settings' ``audience_ids`` and from ``CDP_META_AUDIENCE_IDS`` (JSON,
    for the local stack; the settings win); the API host from ``CDP_META_API_URL`` (the
    local stack's fake server) or Meta's."""
    settings = config.settings
    if not isinstance(settings, MetaCustomAudiencesSettings):
        raise TypeError(f"not a meta_custom_audiences destination: {config.type}")
    return MetaCustomAudiencesDestination(
        access_token=secret(settings.access_token_secret_name).strip(),
        app_secret=secret(settings.app_secret_name).strip() if settings.app_secret_name else None,
        api_version=settings.api_version,
        # the settings' mapping (when the settings model has one) over the environment's
        audience_ids={**mapping_from_env(AUDIENCE_IDS_ENV, config.id), **getattr(settings, "audience_ids", {})},
        max_rows=min(config.effective_batch_size, META_MAX_ROWS_PER_REQUEST),
        base_url=os.environ.get(API_URL_ENV) or GRAPH_URL,
    )


if TYPE_CHECKING:  # the one destination interface, checked by mypy
    _INTERFACE: Destination = MetaCustomAudiencesDestination(access_token="x")
