"""The Google Ads Customer Match destination: audience entries and exits as user-list members.

Google Ads API, REST (``OfflineUserDataJobService``), per user list and per kind of change
(entries are ``create`` operations, exits ``remove``):

1. ``POST {api}/{version}/customers/{customer_id}/offlineUserDataJobs:create`` with
   ``{"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata":
   {"userList": "customers/{customer_id}/userLists/{list id}", "consent": {"adUserData",
   "adPersonalization"}}}}`` (the consent when the settings give it); the answer's
   ``resourceName`` names the job;
2. ``POST {api}/{version}/{job}:addOperations`` with ``{"operations": [{"create":
   {"userIdentifiers": [...]}}, ...], "enablePartialFailure": true}``, each request at most
   100,000 user identifiers and each user at most 20 (``cdp.activation.ad_identifiers``,
   which also normalises and hashes them as the Customer Match guide says);
3. ``POST {api}/{version}/{job}:run``. Google then processes the job on its own (hours); a
   job that was run is "delivered" here: its result is read in Google Ads, not by us.

Headers on every call: ``Authorization: Bearer <access token>``, ``developer-token``, and
``login-customer-id`` when the settings name a manager account. The secret
(``credentials_secret_name``) is JSON ``{"developer_token", "client_id",
"client_secret", "refresh_token"}``; the refresh token is exchanged at Google's OAuth 2.0
token endpoint (``grant_type=refresh_token``) for an access token, kept until a minute
before it expires. A 401 refreshes the token once and repeats the call.

Answers: errors are ``google.rpc.Status`` JSON (``{"error": {"code", "message", "status",
"details": [GoogleAdsFailure]}}``). ``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, ``INTERNAL``,
``DEADLINE_EXCEEDED`` and ``ABORTED`` are retried (after the quota's ``retryDelay`` when
Google gives one), and so is an error whose GoogleAdsFailure codes are all transient
(``databaseError.CONCURRENT_MODIFICATION``, "Retry the request"; internal and quota
errors), whatever its status: Google Ads answers most errors as ``INVALID_ARGUMENT``.
Otherwise ``INVALID_ARGUMENT``, ``PERMISSION_DENIED``, ``UNAUTHENTICATED`` (after the one
refresh), ``NOT_FOUND`` and ``FAILED_PRECONDITION`` are dead-lettered. A failed create or
run decides for every message of its job; a failed addOperations for every message it
carried; with partial failure on, the operations Google names
(``location.fieldPathElements`` ``operations`` index) get their own outcome and the
others go on. Reasons carry Google's status and error codes, never the token, a URL or
an identifier.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import urllib3

from cdp.activation.ad_identifiers import (
    GOOGLE_MAX_IDENTIFIERS_PER_REQUEST,
    GOOGLE_MAX_IDENTIFIERS_PER_USER,
    google_user_identifiers,
)
from cdp.activation.delivery import Destination, OutboundMessage, Outcome, Verdict, classify
from cdp.activation.destinations import DestinationConfig, GoogleCustomerMatchSettings
from cdp.activation.http_post import failure_name, release
from cdp.activation.meta_audiences import (
    NO_IDENTIFIER,
    ad_profile,
    mapping_from_env,
    membership_change,
)

ADS_API_URL = "https://googleads.googleapis.com"
OAUTH_URL = "https://oauth2.googleapis.com"
TOKEN_PATH = "/token"
API_URL_ENV = "CDP_GOOGLE_ADS_API_URL"
OAUTH_URL_ENV = "CDP_GOOGLE_OAUTH_URL"
USER_LIST_IDS_ENV = "CDP_GOOGLE_USER_LIST_IDS"
USER_AGENT = "cdp-google-customer-match/1"
MAX_ERROR_ANSWER = 16_384  # bytes of a refusal read for its reason
MAX_ANSWER = 16 * 1024 * 1024  # bytes of a success read: a partial failure lists every failed operation
TOKEN_MARGIN_S = 60.0  # refresh this long before Google's expiry

RETRY_STATUSES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED"})
PERMANENT_STATUSES = frozenset({"INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND",
                                "FAILED_PRECONDITION", "ALREADY_EXISTS", "OUT_OF_RANGE", "UNIMPLEMENTED"})
# GoogleAdsFailure error codes that say "try again" whatever the RPC status (Google Ads
# answers most errors as INVALID_ARGUMENT): DatabaseError.CONCURRENT_MODIFICATION ("Retry
# the request"), internal and quota errors.
RETRY_FAILURES = frozenset({
    "databaseError.CONCURRENT_MODIFICATION", "internalError.INTERNAL_ERROR", "internalError.TRANSIENT_ERROR",
    "internalError.DEADLINE_EXCEEDED", "quotaError.RESOURCE_EXHAUSTED", "quotaError.RESOURCE_TEMPORARILY_EXHAUSTED",
})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


@dataclass(frozen=True)
class GoogleCredentials:
    """The parts of the credentials secret (JSON)."""

    developer_token: str
    client_id: str
    client_secret: str
    refresh_token: str

    @classmethod
    def from_secret(cls, text: str) -> GoogleCredentials:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("Google credentials secret must be a JSON object")
        missing = [k for k in ("developer_token", "client_id", "client_secret", "refresh_token")
                   if not isinstance(data.get(k), str) or not data[k]]
        if missing:
            raise ValueError(f"Google credentials secret lacks {', '.join(missing)}")
        return cls(data["developer_token"], data["client_id"], data["client_secret"], data["refresh_token"])


class _Failed(Exception):
    """A call's answer that decides for every message of the step (never escapes ``send``)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    data: Any


@dataclass
class GoogleCustomerMatchDestination:
    """Adds and removes people in Customer Match user lists (see the module docstring)."""

    customer_id: str
    credentials: GoogleCredentials
    login_customer_id: str | None = None
    api_version: str = "v24"
    # CDP audience id -> user list id; an audience not listed uses its own id.
    user_list_ids: Mapping[str, str] = field(default_factory=dict)
    # Customer Match consent for every user of a job ({"adUserData": "GRANTED", ...}); omitted when None.
    consent: Mapping[str, str] | None = None
    default_calling_code: int | None = None
    max_identifiers: int = GOOGLE_MAX_IDENTIFIERS_PER_REQUEST
    base_url: str = ADS_API_URL
    oauth_url: str = OAUTH_URL  # the token endpoint is {oauth_url}/token
    timeout_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    http: Any = None  # a urllib3.PoolManager (one per warm function)

    def __post_init__(self) -> None:
        self.customer_id = self.customer_id.replace("-", "")
        if self.login_customer_id:
            self.login_customer_id = self.login_customer_id.replace("-", "")
        if not GOOGLE_MAX_IDENTIFIERS_PER_USER <= self.max_identifiers <= GOOGLE_MAX_IDENTIFIERS_PER_REQUEST:
            raise ValueError(f"max_identifiers must be between {GOOGLE_MAX_IDENTIFIERS_PER_USER} "
                             f"and {GOOGLE_MAX_IDENTIFIERS_PER_REQUEST}")
        if self.http is None:
            self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=self.timeout_s))
        self._token: tuple[str, float] | None = None  # access token, monotonic expiry
        self._token_lock = threading.Lock()

    # --- sending ----------------------------------------------------------------------------

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """One outcome per message, in order: one job per (user list, add or remove)."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        groups: dict[tuple[str, bool], list[tuple[int, list[dict[str, Any]]]]] = {}
        for n, message in enumerate(messages):
            change = membership_change(message.body)
            if change is None:
                outcomes[n] = Outcome("permanent", "not an audience membership change")
                continue
            audience, entered = change
            identifiers = google_user_identifiers(ad_profile(message.body.get("profile")),
                                                  default_calling_code=self.default_calling_code)
            if not identifiers:
                outcomes[n] = Outcome("permanent", NO_IDENTIFIER)
                continue
            list_id = self.user_list_ids.get(audience, audience)
            groups.setdefault((list_id, entered), []).append((n, identifiers))
        if groups:
            try:
                self._access_token()  # a refused refresh decides the whole batch: no job would get further
            except _Failed as failed:
                for members in groups.values():
                    for n, _ in members:
                        outcomes[n] = failed.outcome
                groups = {}
        for (list_id, entered), members in groups.items():
            for n, outcome in self._job(list_id, entered, members):
                outcomes[n] = outcome
        return [o if o is not None else Outcome("retry", "not sent") for o in outcomes]

    def _job(self, list_id: str, entered: bool,
             members: list[tuple[int, list[dict[str, Any]]]]) -> list[tuple[int, Outcome]]:
        verb = "create" if entered else "remove"
        try:
            job = self._create_job(list_id)
        except _Failed as failed:
            return [(n, failed.outcome) for n, _ in members]
        results: dict[int, Outcome] = {}
        sent: list[int] = []  # messages whose operations Google accepted
        for chunk in _chunks(members, self.max_identifiers):
            operations = [{verb: {"userIdentifiers": identifiers}} for _, identifiers in chunk]
            try:
                answer = self._call(f"{job}:addOperations",
                                    {"operations": operations, "enablePartialFailure": True})
            except _Failed as failed:
                results.update((n, failed.outcome) for n, _ in chunk)
                continue
            if not isinstance(answer.data, dict):  # unreadable: which operations failed is unknown
                results.update((n, Outcome("retry", "Google Ads API: unreadable addOperations answer"))
                               for n, _ in chunk)
                continue
            rejected = _rejected_operations(answer.data, len(chunk))
            for index, (n, _) in enumerate(chunk):
                if index in rejected:
                    results[n] = rejected[index]
                else:
                    sent.append(n)
        if sent:
            try:
                self._call(f"{job}:run", {})
                results.update((n, Outcome("delivered")) for n in sent)
            except _Failed as failed:
                results.update((n, failed.outcome) for n in sent)
        return [(n, results[n]) for n, _ in members]

    def _create_job(self, list_id: str) -> str:
        metadata: dict[str, Any] = {"userList": f"customers/{self.customer_id}/userLists/{list_id}"}
        if self.consent:
            metadata["consent"] = dict(self.consent)
        answer = self._call(f"customers/{self.customer_id}/offlineUserDataJobs:create",
                            {"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": metadata}})
        name = answer.data.get("resourceName") if isinstance(answer.data, dict) else None
        expected = rf"customers/{self.customer_id}/offlineUserDataJobs/\d+"
        if not isinstance(name, str) or not re.fullmatch(expected, name):
            raise _Failed(Outcome("retry", "Google Ads API: job created without a usable resource name"))
        return name

    # --- HTTP -------------------------------------------------------------------------------

    def _call(self, path: str, body: Mapping[str, Any]) -> _Answer:
        """POST ``body`` to ``{base}/{version}/{path}``; a 401 refreshes the token once."""
        url = f"{self.base_url.rstrip('/')}/{quote(self.api_version, safe='')}/{quote(path, safe='/:')}"
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        for attempt in range(2):
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                       "Authorization": f"Bearer {self._access_token(force=attempt > 0)}",
                       "developer-token": self.credentials.developer_token}
            if self.login_customer_id:
                headers["login-customer-id"] = self.login_customer_id
            answer = self._post(url, payload, headers)
            if answer.status == 401 and attempt == 0:
                continue
            if 200 <= answer.status < 300:
                return answer
            raise _Failed(google_error_outcome(answer.status, answer.headers, answer.data))
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, url: str, payload: bytes, headers: Mapping[str, str]) -> _Answer:
        try:
            response = self.http.request("POST", url, body=payload, headers=dict(headers), redirect=False,
                                         preload_content=False)
        except urllib3.exceptions.HTTPError as exc:  # timeouts, refused connections, TLS errors
            raise _Failed(classify(None, error=failure_name(exc))) from None
        try:
            raw = response.read(MAX_ANSWER if 200 <= response.status < 300 else MAX_ERROR_ANSWER,
                                decode_content=True)
        finally:
            release(response)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        return _Answer(response.status, dict(response.headers), data)

    def _access_token(self, force: bool = False) -> str:
        """A valid OAuth access token: the cached one, or a new one from the refresh token."""
        with self._token_lock:
            now = self.clock()
            if not force and self._token is not None and now < self._token[1]:
                return self._token[0]
            form = urlencode({"grant_type": "refresh_token", "client_id": self.credentials.client_id,
                              "client_secret": self.credentials.client_secret,
                              "refresh_token": self.credentials.refresh_token}).encode("ascii")
            answer = self._post(self.oauth_url.rstrip("/") + TOKEN_PATH, form,
                                {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": USER_AGENT})
            data = answer.data if isinstance(answer.data, dict) else {}
            token = data.get("access_token")
            if 200 <= answer.status < 300 and isinstance(token, str) and token:
                expires_in = data.get("expires_in")
                lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
                self._token = (token, now + max(lifetime - TOKEN_MARGIN_S, 0.0))
                return token
            self._token = None
            raise _Failed(oauth_error_outcome(answer.status, answer.headers, data))


def _chunks(members: list[tuple[int, list[dict[str, Any]]]],
            max_identifiers: int) -> list[list[tuple[int, list[dict[str, Any]]]]]:
    """Consecutive members, at most ``max_identifiers`` identifiers a chunk, a member never split."""
    chunks: list[list[tuple[int, list[dict[str, Any]]]]] = []
    current: list[tuple[int, list[dict[str, Any]]]] = []
    count = 0
    for member in members:
        size = len(member[1])
        if current and count + size > max_identifiers:
            chunks.append(current)
            current, count = [], 0
        current.append(member)
        count += size
    if current:
        chunks.append(current)
    return chunks


def _failure_codes(status: Mapping[str, Any]) -> list[tuple[str, list[int]]]:
    """Each GoogleAdsFailure error of a Status: ``("offlineUserDataJobError.INVALID_SHA256_FORMAT",
    [operation indexes])``."""
    found: list[tuple[str, list[int]]] = []
    for detail in status.get("details") or []:
        if not isinstance(detail, dict):
            continue
        for error in detail.get("errors") or []:
            if not isinstance(error, dict):
                continue
            code = error.get("errorCode")
            name = ".".join(f"{k}.{v}" for k, v in code.items()) if isinstance(code, dict) else "unknown"
            elements = (error.get("location") or {}).get("fieldPathElements") or []
            indexes = [e["index"] for e in elements if isinstance(e, dict)
                       and e.get("fieldName") == "operations" and isinstance(e.get("index"), int)]
            found.append((name, indexes))
    return found


def _rejected_operations(data: Any, count: int) -> dict[int, Outcome]:
    """The operations a partial-failure answer names, each with its reason."""
    status = data.get("partialFailureError") if isinstance(data, dict) else None
    if not isinstance(status, dict) or not status:
        return {}
    rejected: dict[int, list[str]] = {}
    unplaced: list[str] = []
    for name, indexes in _failure_codes(status):
        for index in indexes or [-1]:
            if 0 <= index < count:
                rejected.setdefault(index, []).append(name)
            else:
                unplaced.append(name)
    if unplaced or not rejected:  # an error Google did not tie to an operation: it may concern any of them
        reason = "Google Ads API partial failure: " + ", ".join(sorted(set(unplaced)) or ["unlocated error"])
        return dict.fromkeys(range(count), Outcome(_verdict_of(unplaced), reason[:300]))
    prefix = "Google Ads API rejected the operation: "
    return {index: Outcome(_verdict_of(names), (prefix + ", ".join(sorted(set(names))))[:300])
            for index, names in rejected.items()}


def _verdict_of(codes: list[str]) -> Verdict:
    """Retry only when every error of an operation says "try again"."""
    return "retry" if codes and all(code in RETRY_FAILURES for code in codes) else "permanent"


def google_error_outcome(status: int, headers: Mapping[str, str], data: Any) -> Outcome:
    """What a Google Ads API refusal means: by the ``google.rpc.Status`` when the body has
    one, else by the HTTP status (``classify``)."""
    error = data.get("error") if isinstance(data, dict) else None
    fallback = classify(status, headers, "")
    if not isinstance(error, dict):
        return Outcome(fallback.verdict, f"Google Ads API: HTTP {status}", fallback.retry_after_s)
    rpc_status = str(error.get("status") or "")
    codes = sorted({name for name, _ in _failure_codes(error)})
    reason = f"Google Ads API: HTTP {status} {rpc_status}".rstrip() + (f": {', '.join(codes)}" if codes else "")
    verdict: Verdict
    if rpc_status in RETRY_STATUSES or (codes and all(code in RETRY_FAILURES for code in codes)):
        verdict = "retry"
    elif rpc_status in PERMANENT_STATUSES:
        verdict = "permanent"
    else:
        verdict = fallback.verdict
    retry_after = _retry_delay(error) if verdict == "retry" else None
    if retry_after is None and verdict == "retry":
        retry_after = fallback.retry_after_s
    return Outcome(verdict, reason[:300], retry_after)


def _retry_delay(error: Mapping[str, Any]) -> float | None:
    """The quota error's ``retryDelay`` ("30s"), from GoogleAdsFailure or google.rpc.RetryInfo."""
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        candidates = [detail.get("retryDelay")]
        for failure in detail.get("errors") or []:
            if isinstance(failure, dict):
                quota = (failure.get("details") or {}).get("quotaErrorDetails") or {}
                candidates.append(quota.get("retryDelay"))
        for value in candidates:
            match = _DURATION.match(value) if isinstance(value, str) else None
            if match:
                return float(match.group(1))
    return None


def oauth_error_outcome(status: int, headers: Mapping[str, str], data: Mapping[str, Any]) -> Outcome:
    """A refused token refresh: ``invalid_grant`` (revoked or expired refresh token),
    ``invalid_client`` and other 4xx never succeed as they are; 5xx and 429 are retried."""
    code = data.get("error")
    reason = f"Google OAuth token refresh: HTTP {status}" + (f" {code}" if isinstance(code, str) else "")
    fallback = classify(status, headers, "")
    verdict: Verdict = "retry" if 200 <= status < 300 else fallback.verdict  # 2xx without a token: try again
    return Outcome(verdict, reason[:300], fallback.retry_after_s if verdict == "retry" else None)


def build(config: DestinationConfig, secret: Callable[[str], str], aws: Callable[[str], Any]) -> Destination:
    """The destination for ``config`` (the Lambda registry's factory). User list ids come
    from the settings' ``user_list_ids`` and from ``CDP_GOOGLE_USER_LIST_IDS`` (JSON, for
    the local stack; the settings win); the hosts from
    ``CDP_GOOGLE_ADS_API_URL`` and ``CDP_GOOGLE_OAUTH_URL`` (the local stack's fake
    servers) or Google's."""
    settings = config.settings
    if not isinstance(settings, GoogleCustomerMatchSettings):
        raise TypeError(f"not a google_customer_match destination: {config.type}")
    return GoogleCustomerMatchDestination(
        customer_id=settings.customer_id,
        login_customer_id=settings.login_customer_id,
        credentials=GoogleCredentials.from_secret(secret(settings.credentials_secret_name)),
        api_version=settings.api_version,
        # the settings' mapping (when the settings model has one) over the environment's
        user_list_ids={**mapping_from_env(USER_LIST_IDS_ENV, config.id), **getattr(settings, "user_list_ids", {})},
        consent=settings.consent.api_value() if settings.consent else None,
        base_url=os.environ.get(API_URL_ENV) or ADS_API_URL,
        oauth_url=os.environ.get(OAUTH_URL_ENV) or OAUTH_URL,
    )


if TYPE_CHECKING:  # the one destination interface, checked by mypy
    _INTERFACE: Destination = GoogleCustomerMatchDestination(
        customer_id="1234567890", credentials=GoogleCredentials("d", "c", "s", "r"))
