"""The Amazon EventBridge destination: messages put on a customer's event bus.

Each message becomes one entry (``PutEvents``, at most 10 a request): ``Source``
``cdp`` (configurable), ``DetailType`` the message's event name (``Audience Entered``,
``Audience Exited``, or a triggered event's name), ``Detail`` the message body as JSON.
``PutEvents`` answers per entry: an entry with an error code is retried if the code is
a throttle or an internal error, and dead-lettered otherwise (a malformed entry will
never be accepted); an entry over EventBridge's 256 KB is dead-lettered without being
sent. A failure of the whole request (throttling, an outage) retries every entry it
carried. Delivery is at least once; consumers can drop repeats by the detail's
``message_id``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from cdp.activation.delivery import Destination, OutboundMessage, Outcome, Verdict

MAX_ENTRIES = 10
MAX_ENTRY_BYTES = 256 * 1024
RETRYABLE_CODES = frozenset({"ThrottlingException", "InternalException", "InternalFailure",
                             "ServiceUnavailable", "ServiceUnavailableException"})


def _detail_type(body: Any) -> str:
    event = body.get("event") if isinstance(body, dict) else None
    if isinstance(event, str):
        return event  # an audience change: "Audience Entered" / "Audience Exited"
    if isinstance(event, dict):
        return str(event.get("event") or event.get("type") or "event")
    return "cdp message"


@dataclass
class EventBridgeDestination:
    events: Any  # a boto3 EventBridge client
    bus: str  # the bus name or ARN (in another account: a resource policy lets this role put)
    source: str = "cdp"

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        entries: list[tuple[int, dict[str, Any]]] = []
        for n, message in enumerate(messages):
            detail = json.dumps(message.body, separators=(",", ":"), sort_keys=True)
            entry = {"Source": self.source, "DetailType": _detail_type(message.body), "Detail": detail,
                     "EventBusName": self.bus}
            if len(json.dumps(entry).encode("utf-8")) > MAX_ENTRY_BYTES:
                outcomes[n] = Outcome("permanent", f"entry over EventBridge's {MAX_ENTRY_BYTES // 1024} KB")
            else:
                entries.append((n, entry))
        for start in range(0, len(entries), MAX_ENTRIES):
            chunk = entries[start:start + MAX_ENTRIES]
            for (n, _), outcome in zip(chunk, self._put([entry for _, entry in chunk]), strict=True):
                outcomes[n] = outcome
        return [o if o is not None else Outcome("retry", "not sent") for o in outcomes]

    def _put(self, entries: list[dict[str, Any]]) -> list[Outcome]:
        try:
            response = self.events.put_events(Entries=entries)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            verdict: Verdict = "retry" if code in RETRYABLE_CODES or code.endswith("Throttled") else "permanent"
            return [Outcome(verdict, f"PutEvents: {code}")] * len(entries)
        except BotoCoreError as exc:  # no answer: timeouts, connection errors
            return [Outcome("retry", f"no answer: {type(exc).__name__}")] * len(entries)
        results = response.get("Entries", [])
        outcomes = []
        for n in range(len(entries)):
            result = results[n] if n < len(results) else {}
            error = result.get("ErrorCode")
            if result.get("EventId") and not error:
                outcomes.append(Outcome("delivered"))
            elif error in RETRYABLE_CODES:
                outcomes.append(Outcome("retry", f"PutEvents entry: {error}"))
            else:
                outcomes.append(Outcome("permanent", f"PutEvents entry: {error or 'no event id'}: "
                                                     f"{result.get('ErrorMessage', '')}".rstrip(": ")))
        return outcomes


if TYPE_CHECKING:  # the one destination interface, checked by mypy
    _INTERFACE: Destination = EventBridgeDestination(events=None, bus="default")


def build(config: Any, secret: Any, aws: Any) -> EventBridgeDestination:
    """The destination of an ``eventbridge`` configuration (the registry's factory)."""
    return EventBridgeDestination(aws("events"), config.settings.event_bus, config.settings.source)
