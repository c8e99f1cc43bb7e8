"""Synthesize ``CdpStack`` once per session (it takes seconds) and share the result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# `infra` is not an installed package: import it from the repo root, like cdk.json's app
# does. This folder too, for the template helpers (works in any pytest import mode).
for entry in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
# The jsii runtime prints a banner on Node 20; set before aws_cdk starts it.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from cdk_template_view import SynthesizedStack  # noqa: E402

# A non-default deployment: every context setting changed, to prove each is honoured.
NON_DEFAULT_CONTEXT: dict[str, Any] = {
    "kinesis_capacity": "provisioned",
    "kinesis_shards": "2",  # CLI context values arrive as strings
    "api_throttle_rate": "50",
    "api_throttle_burst": "100",
    "log_retention_days": "90",
    "alarm_topic_arn": "arn:aws:sns:eu-west-1:123456789012:cdp-alarms",
    "space_id": "shop-eu",
    # A JSON string, as `-c identity_config='{...}'` passes it.
    "identity_config": '{"types": [{"name": "user_id", "priority": 1, "limit": 1}, '
    '{"name": "email", "priority": 2, "limit": 2}], "default_phone_region": "PT"}',
}


def cdk_json_context() -> dict[str, Any]:
    """The context the CLI passes to the app: feature flags and deployment defaults."""
    return dict(json.loads((REPO_ROOT / "cdk.json").read_text())["context"])


def synthesize(context: dict[str, Any], outdir: Path) -> SynthesizedStack:
    from infra.app import create_app

    app, stack = create_app(context, outdir=str(outdir))
    try:
        app.synth()
    except RuntimeError as error:
        # With @aws-cdk/core:annotationsInValidationReport (cdk.json), an error annotation
        # such as an unsuppressed cdk-nag finding fails synthesis itself: say which.
        report = outdir / "validation-report.json"
        if "ValidationFailed" not in str(error) or not report.exists():
            raise
        violations = [
            f"{construct['constructPath']}: {violation['description'].strip()}"
            for plugin in json.loads(report.read_text())["pluginReports"]
            for violation in plugin["violations"]
            if violation["severity"] == "error"
            for construct in violation["violatingConstructs"]
        ]
        pytest.fail("Synthesis failed on error annotations (cdk-nag?):\n" + "\n".join(violations))
    return SynthesizedStack(app=app, stack=stack)


@pytest.fixture(scope="session")
def cdp_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynthesizedStack]:
    """The stack as `npx cdk synth` builds it (cdk.json context)."""
    yield synthesize(cdk_json_context(), tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="session")
def cdp_stack_non_default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynthesizedStack]:
    """The stack with every deployment setting overridden (like `cdk synth -c key=value`)."""
    yield synthesize({**cdk_json_context(), **NON_DEFAULT_CONTEXT}, tmp_path_factory.mktemp("cdk-custom"))


# Every destination type, as a deployment's `destinations` context would declare them:
# secrets by name only (Secrets Manager and SSM), audiences and triggers of each kind, a
# disabled destination, consent categories and a raised concurrency.
ACTIVATION_DESTINATIONS: list[dict[str, Any]] = [
    {"id": "crm-webhook", "name": "CRM webhook", "type": "webhook", "audiences": ["vip", "churn-risk"],
     "settings": {"url": "https://hooks.example.com/cdp", "secret_name": "cdp/webhooks/crm",
                  "headers": {"X-Team": "growth"}},
     "max_concurrency": 5},
    {"id": "sales-slack", "name": "Sales alerts", "type": "slack",
     "settings": {"webhook_url_secret_name": "/cdp/slack/sales"},
     "triggers": [{"name": "big order", "event_type": "track", "event": "Order Completed",
                   "where": [{"path": "properties.total", "op": "exists"}]}]},
    {"id": "ops-bus", "name": "Ops bus", "type": "eventbridge", "audiences": ["vip"],
     "settings": {"event_bus": "customer-events"},
     "triggers": [{"name": "pricing views", "event_type": "page", "event": "Pricing"}]},
    {"id": "partner-queue", "name": "Partner queue", "type": "sqs",
     "settings": {"queue_url": "https://sqs.eu-west-1.amazonaws.com/210987654321/partner-inbox.fifo"},
     "triggers": [{"name": "profile updates", "event_type": "identify"}]},
    {"id": "lake-export", "name": "Data lake export", "type": "s3", "audiences": ["newsletter"],
     "settings": {"bucket": "acme-data-lake", "prefix": "cdp/audiences", "format": "jsonl",
                  "kms_key_arn": "arn:aws:kms:eu-west-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"}},
    {"id": "meta-ads", "name": "Meta ads", "type": "meta_custom_audiences", "audiences": ["vip"],
     "consent_categories": ["advertising"],
     "secrets_kms_key_arn": "arn:aws:kms:us-east-1:123456789012:key/0000aaaa-12ab-34cd-56ef-1234567890ab",
     "settings": {"ad_account_id": "act_1234567890", "access_token_secret_name": "cdp/meta/token",
                  "app_secret_name": "/cdp/meta/app-secret"}},
    {"id": "google-ads", "name": "Google Ads", "type": "google_customer_match", "audiences": ["churn-risk"],
     "settings": {"customer_id": "1234567890", "credentials_secret_name": "cdp/google/ads"}},
    {"id": "hubspot-crm", "name": "HubSpot", "type": "hubspot", "audiences": ["paused-list"], "enabled": False,
     "settings": {"access_token_secret_name": "cdp/hubspot/token"}},
]


@pytest.fixture(scope="session")
def cdp_stack_activation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynthesizedStack]:
    """The stack with every destination type configured (`-c destinations='[...]'`)."""
    context = {**cdk_json_context(), "destinations": json.dumps(ACTIVATION_DESTINATIONS)}
    yield synthesize(context, tmp_path_factory.mktemp("cdk-activation"))
