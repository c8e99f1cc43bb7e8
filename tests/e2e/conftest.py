"""One embedded local stack for the whole e2e suite, on free ports, without the demo.

The stack points boto3 at its moto through the process environment, so the e2e
tests run after every other test (see ``pytest_collection_modifyitems``) and the
environment is restored when the stack stops.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_pipeline import Pipeline
from receivers import Receiver

from cdp.activation.destinations import parse_destinations
from cdp.local import EmbeddedStack

WRITE_KEY = "e2e-write-key"
# Activation: the audiences and bucket the destinations below use (tests/e2e/test_e2e_activation.py).
ACTIVATION_AUDIENCE = "e2e-activation"
FLAKY_AUDIENCE = "e2e-flaky"
SYNC_AUDIENCE = "e2e-synced"
EXPORT_BUCKET = "cdp-e2e-exports"
WEBHOOK_SECRET = "e2e-signing-secret"


def destinations(receiver: Receiver) -> list:
    return parse_destinations([
        {"id": "e2e-hooks", "name": "Webhook", "type": "webhook", "audiences": [ACTIVATION_AUDIENCE],
         "field_mapping": {"email": "email_address", "plan": "plan"},
         "settings": {"url": receiver.url("/hooks"), "secret_name": "cdp/e2e/hooks",
                      "headers": {"X-Team": "growth"}}},
        {"id": "e2e-flaky", "name": "Flaky webhook", "type": "webhook", "audiences": [FLAKY_AUDIENCE],
         "settings": {"url": receiver.url("/flaky"), "secret_name": "cdp/e2e/hooks"}},
        {"id": "e2e-sync", "name": "Daily sync", "type": "webhook", "audiences": [SYNC_AUDIENCE],
         "sync_schedule": "rate(1 day)", "batch_size": 50,
         "settings": {"url": receiver.url("/sync"), "secret_name": "cdp/e2e/hooks"}},
        {"id": "e2e-exports", "name": "Audience files", "type": "s3", "audiences": [ACTIVATION_AUDIENCE],
         "field_mapping": {"email": "email"}, "sync_schedule": "rate(1 day)",
         "settings": {"bucket": EXPORT_BUCKET, "prefix": "cdp/", "format": "csv"}},
        {"id": "e2e-slack", "name": "Sales alerts", "type": "slack",
         "triggers": [{"name": "pricing-by-active", "event": "Pricing Viewed", "audience": ACTIVATION_AUDIENCE,
                       "where": [{"path": "properties.plan", "op": "equals", "value": "enterprise"}]}],
         "settings": {"webhook_url_secret_name": "/cdp/e2e/slack"}},
    ])


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    """The customer's endpoints: /hooks, /flaky (the webhooks) and /slack (Slack's incoming webhook)."""
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Run the e2e tests last: while the stack runs, boto3 in this process talks to it."""
    items.sort(key=lambda item: "e2e" in item.keywords)


@pytest.fixture(scope="session")
def pipeline(receiver: Receiver) -> Iterator[Pipeline]:
    stack = EmbeddedStack(port=0, aws_port=0, write_key=WRITE_KEY, retry_backoff_s=0.05,
                          poll_interval_s=0.05, destinations=destinations(receiver),
                          destination_secrets={"cdp/e2e/hooks": WEBHOOK_SECRET,
                                               "/cdp/e2e/slack": receiver.url("/slack")})
    stack.start()
    stack.session().client("s3").create_bucket(Bucket=EXPORT_BUCKET)
    try:
        yield Pipeline(stack)
    finally:
        stack.stop()
