"""Destination types: the module that builds each (its ``build(config, secret, aws)``).

Adding a destination type is a module with a class behind ``Destination.send`` and a
``build`` function, plus one line here (and its settings model in
``cdp.activation.destinations``). Modules are imported on first use, so a destination
Lambda loads only its own type's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cdp.activation.delivery import Destination
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
