"""The Slack destination: each message POSTed to a Slack incoming webhook as Block Kit.

Slack's incoming webhooks take one message per request (``{"text": ..., "blocks":
[...]}``, ``Content-Type: application/json``); the blocks come from
``cdp.activation.slack_message``:

* an audience change (``kind`` ``audience_membership``) becomes
  ``audience_change_message`` of the change as an ``Audience Entered`` / ``Audience
  Exited`` event: the audience id (the message carries no display name), the person
  (the profile's first ``user_id``, else its first ``anonymous_id``), the profile id and
  the change's time;
* a triggered event (``kind`` ``event``) becomes ``trigger_message``: the matched
  triggers' names as the rule name, the event, and the profile's mapped ``fields``
  (the destination's field mapping chooses what people see) as the summary.

``SlackSettings.template`` is one string for both kinds, whose allowed fields differ
(``slack_message.AUDIENCE_FIELDS``, ``TRIGGER_FIELDS``): a template valid for a kind is
used for that kind, and a kind it is not valid for (``{audience_name}`` in a trigger
alert) keeps its default template. A template valid for neither is refused when the
destination is built.

The webhook URL is a secret (it is the only credential): it is read by name at run time
(``SlackSettings.webhook_url_secret_name``), kept out of the dataclass's repr, and never
part of a reason: a failure to get an answer is named by its kind only, and an answer's
text has the URL and its path removed (Slack's answers are short codes such as
``no_service``; a proxy's page might echo the URL).

Slack's answers (Slack changelog "Improving error conditions for Incoming Webhooks",
2016-05-17, and the incoming-webhook docs): ``200 ok``: delivered; ``400``
``invalid_payload`` / ``user_not_found``, ``403`` ``action_prohibited`` /
``invalid_token``, ``404`` ``channel_not_found`` / ``no_service`` (the webhook was
removed), ``410`` ``channel_is_archived``: permanent (the dead-letter queue; redrive once
fixed); ``429`` (rate limited, with ``Retry-After``) and ``5xx`` (``rollup_error``):
retried, after ``Retry-After`` when given. Redirects are not followed (a permanent
failure). All of that is ``cdp.activation.delivery.classify``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import urllib3

from cdp.activation.delivery import Destination, OutboundMessage, Outcome
from cdp.activation.destinations import DestinationConfig, SlackSettings
from cdp.activation.http_post import post_json
from cdp.activation.slack_message import (
    DEFAULT_AUDIENCE_TEMPLATE,
    DEFAULT_TRIGGER_TEMPLATE,
    MessageTemplate,
    audience_change_message,
    audience_template,
    trigger_message,
    trigger_template,
)
from cdp.segmentation.audience_events import EVENT_NAMES, audience_event

USER_AGENT = "cdp-slack/1"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1"})


def _templates(template: str | None) -> tuple[MessageTemplate, MessageTemplate]:
    """The (audience change, trigger alert) templates from the one configured template."""
    if template is None:
        return audience_template(DEFAULT_AUDIENCE_TEMPLATE), trigger_template(DEFAULT_TRIGGER_TEMPLATE)
    chosen: list[MessageTemplate | None] = []
    problems: list[str] = []
    for make in (audience_template, trigger_template):
        try:
            chosen.append(make(template))
        except ValueError as exc:
            chosen.append(None)
            problems.append(str(exc))
    audience, trigger = chosen
    if audience is None and trigger is None:
        raise ValueError(f"the Slack template suits neither audience changes nor trigger alerts: {problems[0]}")
    return audience or audience_template(), trigger or trigger_template()


def _first(values: Any) -> str | None:
    if isinstance(values, list | tuple):
        for value in values:
            if isinstance(value, str) and value:
                return value
    return None


def _person(profile: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"userId": ...}`` or ``{"anonymousId": ...}`` from the profile's identifiers; {} if neither."""
    identifiers = (profile or {}).get("identifiers") or {}
    if not isinstance(identifiers, Mapping):
        return {}
    for type_name, field_name in (("user_id", "userId"), ("anonymous_id", "anonymousId")):
        value = _first(identifiers.get(type_name))
        if value:
            return {field_name: value}
    return {}


def slack_payload(body: Mapping[str, Any], audience: MessageTemplate | None = None,
                  trigger: MessageTemplate | None = None) -> dict[str, Any] | None:
    """The Slack message for a router message's body; None for a body this destination
    cannot show (an unknown kind, or missing the fields its kind needs)."""
    profile = body.get("profile") if isinstance(body.get("profile"), Mapping) else None
    if body.get("kind") == "audience_membership":
        transition, audience_id = body.get("transition"), body.get("audience_id")
        if transition not in EVENT_NAMES or not isinstance(audience_id, str) or not audience_id:
            return None
        version = body.get("version")
        event = audience_event(audience_id=audience_id, audience_name=audience_id,
                               profile_id=str(body.get("profile_id") or ""), person=_person(profile),
                               transition=transition, version=version if isinstance(version, int) else 0,
                               at=str(body.get("at") or ""))
        return audience_change_message(event, audience)
    if body.get("kind") == "event":
        event_body = body.get("event")
        if not isinstance(event_body, Mapping):
            return None
        triggers = [t for t in body.get("triggers") or [] if isinstance(t, str)]
        fields = (profile or {}).get("fields")
        summary = fields if isinstance(fields, Mapping) and fields else None
        return trigger_message(", ".join(triggers) or "trigger", event_body, summary, trigger)
    return None


@dataclass
class SlackDestination:
    url: str = field(repr=False)  # the incoming-webhook URL: a secret
    template: str | None = None  # SlackSettings.template
    # 5 s: ten slow answers of a FIFO batch (one request each) fit the function's 120 s
    timeout_s: float = 5.0
    http: Any = None  # a urllib3.PoolManager (one per warm function)
    audience: MessageTemplate = field(init=False, repr=False)
    trigger: MessageTemplate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        host = (parts.hostname or "").lower()
        # The message names no part of the URL: it is the secret.
        if not host or not (parts.scheme == "https" or (parts.scheme == "http" and host in _LOCAL_HOSTS)):
            raise ValueError("the Slack webhook URL secret does not hold an https URL")
        self.audience, self.trigger = _templates(self.template)
        if self.http is None:
            self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=self.timeout_s))

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """POST each message (one request each, in order); one outcome per message."""
        return [self._post(message) for message in messages]

    def _post(self, message: OutboundMessage) -> Outcome:
        payload = slack_payload(message.body, self.audience, self.trigger)
        if payload is None:
            return Outcome("permanent", f"not a message Slack can show (kind {str(message.body.get('kind'))[:40]!r})")
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
        return post_json(self.http, self.url, body, headers, scrub=self._scrub)

    def _scrub(self, text: str) -> str:
        """An answer's text without the webhook URL or its path (the path holds the token)."""
        path = urlsplit(self.url).path
        for secret in (self.url, path if len(path) > 1 else ""):
            if secret:
                text = text.replace(secret, "[webhook]")
        return text


def build(config: DestinationConfig, secret: Callable[[str], str], aws: Callable[[str], Any]) -> SlackDestination:
    """The destination for a ``slack`` configuration: the webhook URL read from its secret."""
    settings = config.settings
    if not isinstance(settings, SlackSettings):
        raise TypeError(f"destination {config.id!r} is not a slack destination")
    return SlackDestination(url=secret(settings.webhook_url_secret_name).strip(), template=settings.template)


if TYPE_CHECKING:  # the one destination interface, checked by mypy
    _INTERFACE: Destination = SlackDestination(url="https://hooks.slack.com/services/x")
