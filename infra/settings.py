"""Deployment settings read from CDK context (cdk.json, or ``-c key=value`` on the CLI)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from aws_cdk import aws_logs as logs
from constructs import Node
from pydantic import ValidationError

from cdp import resources
from cdp.access_tokens import valid_space_id
from cdp.activation.destinations import DestinationConfig, parse_destinations, problems
from cdp.identity.config import IdentityConfig

KinesisCapacity = Literal["on-demand", "provisioned"]

# CloudWatch Logs accepts only these retention periods; the CDK enum is name-valued in
# Python, so the day counts are spelled out here.
RETENTION_DAYS: dict[int, logs.RetentionDays] = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


@dataclass(frozen=True)
class DeploymentSettings:
    """What may differ between deployments; defaults are what cdk.json ships."""

    # On-demand needs no capacity planning and scales to zero cost per shard-hour;
    # provisioned is cheaper at steady, predictable volume.
    kinesis_capacity: KinesisCapacity = "on-demand"
    kinesis_shards: int = 1
    api_throttle_rate: int = 1000
    api_throttle_burst: int = 2000
    log_retention_days: int = 30
    # Optional existing SNS topic the alarms notify (imported by ARN, no lookup).
    alarm_topic_arn: str | None = None
    # Identity resolution: identifier types, priorities, limits, blocked values, phone
    # region (docs/identity.md); validated at synth time, so a typo fails `cdk synth`.
    identity_config: IdentityConfig = field(default_factory=IdentityConfig)
    # The Profile API's space (/v1/spaces/<space>/...); access tokens are bound to it.
    space_id: str = "default"
    # Activation destinations (docs/activation.md): each gets its queue, dead-letter queue
    # and function; none: no activation resources at all. Validated at synth.
    destinations: tuple[DestinationConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.kinesis_capacity not in ("on-demand", "provisioned"):
            raise ValueError(
                f"kinesis_capacity must be 'on-demand' or 'provisioned', not {self.kinesis_capacity!r}"
            )
        if self.kinesis_shards < 1:
            raise ValueError("kinesis_shards must be >= 1")
        if self.api_throttle_rate < 1 or self.api_throttle_burst < 1:
            raise ValueError("api_throttle_rate and api_throttle_burst must be >= 1")
        if self.log_retention_days not in RETENTION_DAYS:
            raise ValueError(
                f"log_retention_days must be one of {sorted(RETENTION_DAYS)}, not {self.log_retention_days}"
            )
        if not valid_space_id(self.space_id):
            raise ValueError(f"space_id must be 1-64 letters, digits, '-' or '_', not {self.space_id!r}")
        _check_destinations(self.destinations)

    @property
    def log_retention(self) -> logs.RetentionDays:
        return RETENTION_DAYS[self.log_retention_days]

    @classmethod
    def from_node(cls, node: Node) -> DeploymentSettings:
        """Read the settings from context; CLI values arrive as strings, cdk.json ones typed."""
        defaults = cls()

        def value(key: str) -> Any:
            found = node.try_get_context(key)
            return getattr(defaults, key) if found is None or found == "" else found

        return cls(
            kinesis_capacity=cast(KinesisCapacity, str(value("kinesis_capacity"))),
            kinesis_shards=int(value("kinesis_shards")),
            api_throttle_rate=int(value("api_throttle_rate")),
            api_throttle_burst=int(value("api_throttle_burst")),
            log_retention_days=int(value("log_retention_days")),
            alarm_topic_arn=value("alarm_topic_arn") or None,
            identity_config=_identity_config(value("identity_config")),
            space_id=str(value("space_id")),
            destinations=_destinations(node.try_get_context("destinations"),
                                       node.try_get_context("destinations_file")),
        )


def _identity_config(found: Any) -> IdentityConfig:
    """Context ``identity_config``: an object in cdk.json, or a JSON string with ``-c``."""
    if isinstance(found, IdentityConfig):
        return found
    if isinstance(found, str):
        found = json.loads(found)
    return IdentityConfig.model_validate(found)


def _destinations(found: Any, file: Any) -> tuple[DestinationConfig, ...]:
    """Context ``destinations`` (a list in cdk.json, a JSON string with ``-c``) or
    ``destinations_file`` (a JSON file's path, relative to the working directory)."""
    if found not in (None, "") and file not in (None, ""):
        raise ValueError("give destinations or destinations_file, not both")
    if file not in (None, ""):
        found = json.loads(Path(str(file)).read_text(encoding="utf-8"))
    if found in (None, ""):
        return ()
    if isinstance(found, str):
        found = json.loads(found)
    if not isinstance(found, list):
        raise ValueError("destinations: expected a list of destinations")
    for index, item in enumerate(found):
        try:
            DestinationConfig.model_validate(item)
        except ValidationError as error:
            # problems() leaves the input values out (one may be a pasted secret); `from
            # None` keeps pydantic's own message, which quotes them, out of the traceback.
            reasons = "; ".join(f"{p['field']}: {p['reason']}" for p in problems(error))
            raise ValueError(f"destinations[{index}]{_label(item)} is invalid: {reasons}") from None
    return tuple(parse_destinations(found))


def _label(item: Any) -> str:
    """`` (id 'x')`` when the item has a well-formed id, to say which destination failed."""
    found = item.get("id") if isinstance(item, dict) else None
    return f" (id {found!r})" if isinstance(found, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", found) else ""


def _check_destinations(destinations: tuple[DestinationConfig, ...]) -> None:
    """What the configuration model accepts but a deployment could not run or build: said
    at synth time, naming the destination, rather than by a failing function or CloudFormation."""
    logical_ids: dict[str, str] = {}
    queue_names: dict[str, str] = {}
    for destination in destinations:
        settings = destination.settings
        if settings.type == "webhook" and not settings.secret_name:
            raise ValueError(
                f"destination {destination.id!r} (webhook) has no settings.secret_name: webhook requests are "
                "always signed (X-CDP-Signature), so give the name of the Secrets Manager secret or SSM "
                "SecureString parameter holding the signing secret")
        if settings.type == "s3" and re.search(r"[*?]", settings.prefix):
            raise ValueError(
                f"destination {destination.id!r} (s3): settings.prefix must not contain '*' or '?': they are "
                "IAM wildcards, and the function's write permission is scoped to the prefix")
        # Construct ids: "a-b" and "a_b" would both be DestinationAB.
        logical = resources.destination_logical_id(destination.id)
        if logical in logical_ids:
            raise ValueError(f"destinations {logical_ids[logical]!r} and {destination.id!r} differ only in "
                             f"'-' versus '_' (both would be {logical}): rename one")
        logical_ids[logical] = destination.id
        # Queue names (the stack's prefix aside): "x-dlq" is both the queue of a destination
        # "x-dlq" and the dead-letter queue of "x"; CloudFormation would fail on the second.
        for dead_letter in (False, True):
            name = resources.destination_queue_name("", destination.id, destination.type, dead_letter)
            if name in queue_names:
                raise ValueError(f"destinations {queue_names[name]!r} and {destination.id!r} would both have a "
                                 f"queue named <stack>-{name}: rename one (ids ending in '-dlq' clash)")
            queue_names[name] = destination.id
