"""Destination configuration: what each destination receives, and how it is reached.

A destination is one ``DestinationConfig``: an id (slug), a type (one Lambda per type),
the audiences whose entries and exits it receives, real-time trigger rules on incoming
events, the consent categories it needs, a field mapping (profile trait -> destination
field), the name the Segment ``integrations`` object uses for it, per-type ``settings``,
a batch size within its API's limit and a retry window.

Every model refuses unknown fields and is frozen, as the segmentation definitions are
(``cdp.segmentation.definitions``); :func:`problems` names the field of each error.

Secrets are never configuration: a setting that needs one holds the *name* of a Secrets
Manager secret or SSM SecureString parameter (``*_secret_name``), read by the destination
Lambda at run time. Values that look like credentials (a known token prefix, a long
random-looking string, a URL with a password or a ``token=`` query parameter, a Slack
incoming-webhook URL, an ``Authorization`` header) are refused wherever they appear, so
a pasted secret fails validation instead of landing in a repository or a log.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from cdp.activation.ad_identifiers import META_MAX_ROWS_PER_REQUEST
from cdp.segmentation.definitions import Name, Predicate, Slug, _quote
from cdp.segmentation.predicates import MISSING, lookup

DestinationType = Literal[
    "webhook", "slack", "eventbridge", "sqs", "s3", "meta_custom_audiences", "google_customer_match", "hubspot",
]

# The key of each type in an event's ``integrations`` object. Destination flags are case
# sensitive and match the destination's name in Segment's catalog
# (segment-docs src/connections/destination-data-control.md). Catalog titles checked:
# "Webhooks", "Amazon EventBridge" (catalog/webhooks, catalog/amazon-eventbridge).
# "Slack", "Amazon S3", "Facebook Custom Audiences", "HubSpot" are the catalog's names as
# commonly used; Segment has no SQS destination, so "Amazon SQS" follows the AWS naming of
# its siblings; Google's is the brief's "Google Ads (Customer Match)" (Segment's own Engage
# list destination is titled "Google Ads Remarketing Lists"). ``integration_name``
# overrides any of these per destination.
DEFAULT_INTEGRATION_NAMES: dict[str, str] = {
    "webhook": "Webhooks",
    "slack": "Slack",
    "eventbridge": "Amazon EventBridge",
    "sqs": "Amazon SQS",
    "s3": "Amazon S3",
    "meta_custom_audiences": "Facebook Custom Audiences",
    "google_customer_match": "Google Ads (Customer Match)",
    "hubspot": "HubSpot",
}

# Records one destination Lambda sends per request: (default, most), from each API's limit.
BATCH_LIMITS: dict[str, tuple[int, int]] = {
    "webhook": (1, 100),  # our choice: one POST per message by default, a JSON array of up to 100
    "slack": (1, 1),  # an incoming webhook takes one message per request
    "eventbridge": (10, 10),  # PutEvents: at most 10 entries
    "sqs": (10, 10),  # SendMessageBatch: at most 10 messages
    "s3": (10_000, 1_000_000),  # rows per export file (our choice)
    "meta_custom_audiences": (META_MAX_ROWS_PER_REQUEST, META_MAX_ROWS_PER_REQUEST),
    # users per request; a user carries up to 20 identifiers and a request at most 100,000
    # identifiers (cdp.activation.ad_identifiers), so 5,000 users always fit
    "google_customer_match": (5_000, 5_000),
    "hubspot": (100, 100),  # HubSpot CRM batch upsert: at most 100 inputs
}

DEFAULT_RETRY_WINDOW_HOURS = 4  # as Segment (cdp.activation.delivery.RetryPolicy)
# A FIFO message group waits while its head message is retried, so a profile's later
# changes wait as long as the window: a day at most.
MAX_RETRY_WINDOW_HOURS = 24
MAX_TRIGGERS = 50
MAX_FILTERS = 20
MAX_AUDIENCES = 1_000
MAX_HEADERS = 20

# Secrets Manager names ([A-Za-z0-9/_+=.@-], up to 512) and SSM parameter names
# ([A-Za-z0-9_.-/]) both fit this; ARNs of either are accepted too.
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:(secretsmanager|ssm):[a-z0-9-]+:\d{12}:(secret:|parameter/)\S{1,512}$")
# Well-known credential shapes: Slack tokens, AWS access keys, Meta user/system tokens,
# HubSpot private-app tokens, Stripe-style keys, GitHub tokens, JWTs, PEM keys, Bearer/Basic.
_SECRET_PREFIXES = re.compile(
    r"^(xox[abposr]-|xapp-|AKIA[0-9A-Z]{12}|ASIA[0-9A-Z]{12}|EAA[A-Za-z0-9]{20}|pat-[a-z]{2,3}\d?-|"
    r"(sk|rk|pk)_(live|test)_|gh[pousr]_[A-Za-z0-9]{20}|eyJ[A-Za-z0-9_-]{10,}\.|-----BEGIN|"
    r"(Bearer|Basic)\s)",
    re.IGNORECASE,
)
_RANDOM_RUN = re.compile(r"[A-Za-z0-9+/=_]{32,}")  # a long run with no word separators
_SECRET_PARAMS = re.compile(r"(token|secret|password|passwd|pwd|api[_-]?key|apikey|key|sig|signature|auth)",
                            re.IGNORECASE)
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key",
                                 "x-auth-token"})
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1"})


def looks_like_secret(text: str) -> bool:
    """Whether a configuration value looks like a credential rather than a name or a URL:
    a known token prefix, or a run of 32+ characters without word separators that mixes
    letters and digits (hex digests, base64 keys, random tokens)."""
    stripped = text.strip()
    if _SECRET_PREFIXES.search(stripped):
        return True
    return any(re.search(r"\d", run) and re.search(r"[A-Za-z]", run) for run in _RANDOM_RUN.findall(stripped))


def _no_secret(value: str) -> str:
    if looks_like_secret(value):
        raise ValueError("looks like a secret value: store it in Secrets Manager or SSM and give its name")
    return value


def _secret_name(value: str) -> str:
    if _SECRET_ARN.match(value):
        return value
    if not _SECRET_NAME.match(value):
        raise ValueError("is not a Secrets Manager secret or SSM parameter name (or ARN)")
    return _no_secret(value)


SecretName = Annotated[StrictStr, Field(min_length=1, max_length=2048), AfterValidator(_secret_name)]


def _https_url(value: str) -> str:
    """An https URL (http only for localhost / 127.0.0.1, for the local stack), without
    credentials in it."""
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    if parts.scheme == "http":
        if host not in _LOCAL_HOSTS:
            raise ValueError("must use https (http only for localhost or 127.0.0.1)")
    elif parts.scheme != "https":
        raise ValueError("must be an https URL")
    if not host:
        raise ValueError("has no host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials: give a secret name instead")
    if host == "hooks.slack.com":
        raise ValueError("a Slack incoming-webhook URL is a secret: use a slack destination's webhook_url_secret_name")
    for name, param in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_PARAMS.fullmatch(name) or looks_like_secret(param):
            raise ValueError(f"query parameter {name!r} looks like a credential: give a secret name instead")
    if looks_like_secret(parts.path):
        raise ValueError("path looks like it carries a secret: give a secret name instead")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Settings(_Strict):
    """Per-type settings. Secret names are checked by ``SecretName``, URLs by their own
    validator; every other text setting must not look like a secret value."""

    @model_validator(mode="after")
    def _no_secret_values(self) -> _Settings:
        for name, value in self:
            if isinstance(value, str) and name != "type" and not name.endswith("secret_name") \
                    and name not in ("url", "queue_url") and looks_like_secret(value):
                raise ValueError(f"setting {name!r} looks like a secret value: store it in Secrets Manager "
                                 "or SSM and give its name")
        return self


class WebhookSettings(_Settings):
    """JSON POST to ``url``; ``secret_name`` holds the HMAC signing secret
    (``cdp.activation.webhook_signing``); ``headers`` are sent as given and may carry no
    credentials."""

    type: Literal["webhook"] = "webhook"
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    headers: dict[Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")],
                  Annotated[StrictStr, Field(max_length=1000)]] = Field(default_factory=dict,
                                                                        max_length=MAX_HEADERS)
    secret_name: SecretName | None = None

    @field_validator("url")
    @classmethod
    def _safe_url(cls, value: str) -> str:
        return _https_url(value)

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if name.lower() in _CREDENTIAL_HEADERS:
                raise ValueError(f"header {name!r} carries credentials: use secret_name (signed requests)")
            if looks_like_secret(value):
                raise ValueError(f"header {name!r} looks like a secret value")
        return headers


class SlackSettings(_Settings):
    """The incoming-webhook URL is itself a secret (Slack: "keep it secret"), so only its
    name is configured. ``template``: the first line (``cdp.activation.slack_message``)."""

    type: Literal["slack"] = "slack"
    webhook_url_secret_name: SecretName
    template: Annotated[StrictStr, Field(min_length=1, max_length=1000)] | None = None


class EventBridgeSettings(_Settings):
    type: Literal["eventbridge"] = "eventbridge"
    event_bus: Annotated[StrictStr, Field(min_length=1, max_length=1600,
                                          pattern=r"^(arn:aws[a-z-]*:events:[a-z0-9-]+:\d{12}:event-bus/)?"
                                                  r"[A-Za-z0-9/._-]{1,256}$")]
    source: Annotated[StrictStr, Field(min_length=1, max_length=256)] = "cdp.activation"
    detail_type: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None


# A customer-managed KMS key of the customer's queue or bucket: the role may use it for that.
KmsKeyArn = Annotated[StrictStr, Field(pattern=r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]{1,128}$")]


class SqsSettings(_Settings):
    type: Literal["sqs"] = "sqs"
    queue_url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    kms_key_arn: KmsKeyArn | None = None

    @field_validator("queue_url")
    @classmethod
    def _safe_url(cls, value: str) -> str:
        return _https_url(value)


class S3Settings(_Settings):
    type: Literal["s3"] = "s3"
    bucket: Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    prefix: Annotated[StrictStr, Field(max_length=512)] = ""
    format: Literal["csv", "jsonl"] = "jsonl"
    kms_key_arn: KmsKeyArn | None = None  # the bucket's default encryption key, if customer-managed
    # With a sync_schedule: each successful sync also writes the audience's full member list
    # (``full/<audience>/<sync id>``, with its manifest) for tools that import whole files.
    full_export: StrictBool = True


class MetaCustomAudiencesSettings(_Settings):
    type: Literal["meta_custom_audiences"] = "meta_custom_audiences"
    ad_account_id: Annotated[StrictStr, Field(pattern=r"^(act_)?\d{1,30}$")]
    access_token_secret_name: SecretName
    # the Meta app's secret: requests then carry appsecret_proof ("Require App Secret")
    app_secret_name: SecretName | None = None
    api_version: Annotated[StrictStr, Field(pattern=r"^v\d{1,3}\.\d{1,2}$")] = "v26.0"
    # CDP audience id -> Meta custom audience id (an audience not listed: its own id)
    audience_ids: dict[Slug, Annotated[StrictStr, Field(pattern=r"^\d{1,30}$")]] = Field(
        default_factory=dict, max_length=MAX_AUDIENCES)


ConsentStatus = Literal["GRANTED", "DENIED", "UNSPECIFIED"]


class GoogleConsent(_Strict):
    """Google Ads API ``Consent``, sent with every Customer Match job (all its users). Since
    March 2024 Customer Match uses EEA users' data only when both are ``GRANTED``. The CDP
    sends a profile only when its stored consent grants the destination's
    ``consent_categories``: name the categories that stand for these two purposes there and
    set both to ``GRANTED`` here."""

    ad_user_data: ConsentStatus
    ad_personalization: ConsentStatus

    def api_value(self) -> dict[str, str]:
        return {"adUserData": self.ad_user_data, "adPersonalization": self.ad_personalization}


class GoogleCustomerMatchSettings(_Settings):
    type: Literal["google_customer_match"] = "google_customer_match"
    customer_id: Annotated[StrictStr, Field(pattern=r"^\d{10}$")]
    login_customer_id: Annotated[StrictStr, Field(pattern=r"^\d{10}$")] | None = None
    credentials_secret_name: SecretName
    api_version: Annotated[StrictStr, Field(pattern=r"^v\d{1,3}$")] = "v24"
    # CDP audience id -> Customer Match user list id (an audience not listed: its own id)
    user_list_ids: dict[Slug, Annotated[StrictStr, Field(pattern=r"^\d{1,30}$")]] = Field(
        default_factory=dict, max_length=MAX_AUDIENCES)
    # the jobs' Customer Match consent (EEA users); not sent when unset
    consent: GoogleConsent | None = None


class HubSpotSettings(_Settings):
    type: Literal["hubspot"] = "hubspot"
    access_token_secret_name: SecretName
    # the contact property that holds the audiences a contact is in
    membership_property: Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_]{0,99}$")] = "cdp_audiences"


AnySettings = (WebhookSettings | SlackSettings | EventBridgeSettings | SqsSettings | S3Settings
               | MetaCustomAudiencesSettings | GoogleCustomerMatchSettings | HubSpotSettings)
Settings = Annotated[
    Union[  # noqa: UP007 (a discriminated union of models)
        WebhookSettings, SlackSettings, EventBridgeSettings, SqsSettings, S3Settings,
        MetaCustomAudiencesSettings, GoogleCustomerMatchSettings, HubSpotSettings,
    ],
    Field(discriminator="type"),
]

FilterOp = Literal["equals", "not_equals", "exists", "contains", "in"]


class TriggerFilter(Predicate):
    """A test of a dotted path of the event (``properties.plan``, ``context.page.path``,
    ``traits.email`` for identify); ops ``equals``, ``not_equals``, ``exists``,
    ``contains``, ``in``."""

    path: Annotated[str, Field(min_length=1, max_length=200)]

    @field_validator("op")
    @classmethod
    def _trigger_ops(cls, op: str) -> str:
        if op not in ("equals", "not_equals", "exists", "contains", "in"):
            raise ValueError("trigger filters use equals, not_equals, exists, contains or in")
        return op

    def summary(self) -> str:
        return f"{self.path} {self.describe()}"


class Trigger(_Strict):
    """A real-time rule: events of ``event_type`` (named ``event``: the track event's name,
    the page's or screen's ``name``; none: every event of the type), passing every filter
    (``where``: the event), of a person in ``audience`` (if given) whose profile passes
    ``profile_where``."""

    name: Name
    event_type: Literal["track", "page", "screen", "identify"] = "track"
    event: Name | None = None
    where: list[TriggerFilter] = Field(default_factory=list, max_length=MAX_FILTERS)
    audience: Slug | None = None
    # Conditions on the person's profile as it is when the event arrives (paths of the
    # profile view: ``traits.plan``, ``identifiers.email``); a person without a profile yet
    # (a first event) fails them.
    profile_where: list[TriggerFilter] = Field(default_factory=list, max_length=MAX_FILTERS)

    @model_validator(mode="after")
    def _identify_has_no_name(self) -> Trigger:
        if self.event_type == "identify" and self.event is not None:
            raise ValueError("identify calls have no name: leave 'event' out")
        return self

    def summary(self) -> str:
        if self.event_type == "track":
            what = f"{_quote(self.event)} events" if self.event else "any track event"
        elif self.event_type == "identify":
            what = "identify calls"
        else:
            what = f"{self.event_type} {_quote(self.event)} views" if self.event else f"any {self.event_type} view"
        if self.where:
            what += " where " + " and ".join(f.summary() for f in self.where)
        if self.audience:
            what += f" by a member of {_quote(self.audience)}"
        if self.profile_where:
            what += " whose profile has " + " and ".join(f.summary() for f in self.profile_where)
        return f"{self.name}: {what}"


class DestinationConfig(_Strict):
    """One destination (see the module docstring)."""

    id: Slug
    name: Name
    type: DestinationType
    enabled: StrictBool = True
    audiences: list[Slug] = Field(default_factory=list, max_length=MAX_AUDIENCES)
    triggers: list[Trigger] = Field(default_factory=list, max_length=MAX_TRIGGERS)
    consent_categories: list[Annotated[StrictStr, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50)
    # Tests of the profile a message is about (``traits.country equals PT``,
    # ``identifiers.email exists``): entries and events of profiles that fail one are not
    # sent (exits always are). Checked by the destination function, on the profile as it is then.
    filters: list[TriggerFilter] = Field(default_factory=list, max_length=MAX_FILTERS)
    field_mapping: dict[Annotated[str, Field(min_length=1, max_length=200)],
                        Annotated[StrictStr, Field(min_length=1, max_length=200)]] = Field(
        default_factory=dict, max_length=200)
    integration_name: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    settings: Settings
    batch_size: Annotated[StrictInt, Field(ge=1)] | None = None
    retry_window_hours: Annotated[StrictInt, Field(ge=1, le=MAX_RETRY_WINDOW_HOURS)] = DEFAULT_RETRY_WINDOW_HOURS
    # How many batches of this destination are delivered at once (the queue mapping's
    # maximum concurrency, 2-1000 as Lambda allows): its rate limit against the API.
    max_concurrency: Annotated[StrictInt, Field(ge=2, le=1000)] = 2
    # The customer-managed KMS key of its secret (Secrets Manager or SSM SecureString), if the
    # secret does not use the AWS-managed key: the role may decrypt with that key only.
    secrets_kms_key_arn: KmsKeyArn | None = None
    # Scheduled full/diff syncs of the destination's audiences (batch syncs), as an
    # EventBridge schedule expression; none: real-time changes only.
    sync_schedule: Annotated[StrictStr, Field(pattern=r"^(rate\(\d{1,4} (minute|minutes|hour|hours|day|days)\)"
                                                      r"|cron\([^()]{9,200}\))$")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _settings_type_from_destination(cls, data: Any) -> Any:
        # The settings' type is the destination's: written once, in the destination.
        if isinstance(data, Mapping) and isinstance(data.get("settings"), Mapping) \
                and "type" not in data["settings"] and isinstance(data.get("type"), str):
            data = {**data, "settings": {**data["settings"], "type": data["type"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DestinationConfig:
        if self.settings.type != self.type:
            raise ValueError(f"settings are for {self.settings.type!r}, the destination is {self.type!r}")
        most = BATCH_LIMITS[self.type][1]
        if self.batch_size is not None and self.batch_size > most:
            raise ValueError(f"batch_size: at most {most} for a {self.type} destination")
        if len(set(self.audiences)) != len(self.audiences):
            raise ValueError("audiences: listed more than once")
        if len({t.name for t in self.triggers}) != len(self.triggers):
            raise ValueError("triggers: two triggers share a name")
        mapped = list(self.field_mapping.values())
        if len(set(mapped)) != len(mapped):
            raise ValueError("field_mapping: two traits map to the same destination field")
        return self

    @property
    def integration_key(self) -> str:
        """The key of this destination in an event's ``integrations`` object."""
        return self.integration_name or DEFAULT_INTEGRATION_NAMES[self.type]

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or BATCH_LIMITS[self.type][0]

    def map_traits(self, traits: Mapping[str, Any]) -> dict[str, Any]:
        """The destination's fields from a profile's traits (dotted paths); a trait the
        profile lacks is left out, not sent as null."""
        mapped: dict[str, Any] = {}
        for trait, field in self.field_mapping.items():
            value = lookup(dict(traits), trait)
            if value is not MISSING:
                mapped[field] = value
        return mapped

    def summary(self) -> str:
        """One line for the CLI: type, state, what it receives. No settings (they may name
        endpoints and secrets)."""
        parts = [f"{self.type}{'' if self.enabled else ' (disabled)'}"]
        if self.audiences:
            shown = ", ".join(self.audiences[:5]) + (f" and {len(self.audiences) - 5} more"
                                                     if len(self.audiences) > 5 else "")
            parts.append(f"audiences: {shown}")
        if self.triggers:
            parts.append("triggers: " + "; ".join(t.summary() for t in self.triggers))
        if not self.audiences and not self.triggers:
            parts.append("receives nothing (no audiences, no triggers)")
        if self.consent_categories:
            parts.append("needs consent to " + ", ".join(sorted(self.consent_categories)))
        return " | ".join(parts)


def parse_destinations(data: Any) -> list[DestinationConfig]:
    """A list of destinations from JSON data; ids must be unique. Raises ``ValidationError``
    (see :func:`problems`) or ``ValueError`` for a repeated id."""
    if not isinstance(data, list):
        raise ValueError("destinations: expected a list")
    configs = [DestinationConfig.model_validate(item) for item in data]
    seen: set[str] = set()
    for config in configs:
        if config.id in seen:
            raise ValueError(f"destinations: id {config.id!r} is used twice")
        seen.add(config.id)
    return configs


def problems(exc: ValidationError) -> list[dict[str, str]]:
    """Each error as ``{"field": "settings.webhook.url", "reason": ...}``. The input value
    is never included (it may be a pasted secret)."""
    found = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "(destination)"
        found.append({"field": field, "reason": error["msg"].removeprefix("Value error, ")})
    return found


def load_destinations_file(path: str | Path) -> list[DestinationConfig]:
    """The destinations of a JSON file (a list, as the deployment settings hold them). A
    relative path is the function's code directory's (``LAMBDA_TASK_ROOT``), where the CDK
    app writes the deployment's destinations; a missing file means no destinations."""
    chosen = Path(path)
    if not chosen.is_absolute():
        chosen = Path(os.environ.get("LAMBDA_TASK_ROOT") or ".") / chosen
    if not chosen.is_file():
        return []
    return parse_destinations(json.loads(chosen.read_text(encoding="utf-8")))


def destinations_document(destinations: Iterable[DestinationConfig]) -> str:
    """The JSON the CDK app and the local stack write for the functions (no secrets: names only)."""
    return json.dumps([d.model_dump(mode="json", exclude_defaults=False) for d in destinations],
                      indent=1, sort_keys=True)
