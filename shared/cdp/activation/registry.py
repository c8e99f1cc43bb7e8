"""Destination types: the module that builds each (its ``build(config, secret, aws)``).

Adding a destination type is a module with a class behind ``Destination.send`` and a
``build`` function, plus one line here (and its settings model in
``cdp.activation.destinations``). Modules are imported on first use, so a destination
Lambda loads only its own type's code.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from cdp.activation.delivery import Destination, OutboundMessage, Outcome
from cdp.activation.destinations import DestinationConfig

MODULES: dict[str, str] = {
    "webhook": "cdp.activation.webhook",
    "slack": "cdp.activation.slack",
    "eventbridge": "cdp.activation.eventbridge",
    "sqs": "cdp.activation.sqs_destination",
    "s3": "cdp.activation.s3_export",
    "meta_custom_audiences": "cdp.activation.meta_audiences",
    "google_customer_match": "cdp.activation.google_customer_match",
    "hubspot": "cdp.activation.hubspot",
}


def build_destination(config: DestinationConfig, secret: Callable[[str], str],
                      aws: Callable[[str], Any]) -> Destination:
    """The destination object of a configuration (secrets read now, through ``secret``)."""
    module = importlib.import_module(MODULES[config.type])
    destination: Destination = module.build(config, secret, aws)
    return destination


class RefreshingDestination:
    """A destination built again from its configuration every ``max_age_s`` seconds, so a
    rotated secret (read when the destination is built) is in use within that time in a
    warm function, as the secret reader's cache promises."""

    def __init__(self, build: Callable[[], Destination], max_age_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._build = build
        self._max_age = max_age_s
        self._clock = clock
        self._current = build()
        self._built_at = clock()

    @property
    def current(self) -> Destination:
        if self._clock() - self._built_at >= self._max_age:
            self._current = self._build()
            self._built_at = self._clock()
        return self._current

    def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        return self.current.send(messages)
