"""Runtime settings, parsed once from the environment (see docs/configuration.md)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, Field

from cdp import resources
from cdp.identity.config import IdentityConfig


class Settings(BaseModel):
    """What a function needs to know about its deployment."""

    sources_table: str = resources.SOURCES_TABLE.local_name
    events_table: str = resources.EVENTS_TABLE.local_name
    quarantine_table: str = resources.QUARANTINE_TABLE.local_name
    identity_table: str = resources.IDENTITY_TABLE.local_name
    segments_table: str = resources.SEGMENTS_TABLE.local_name
    memberships_table: str = resources.MEMBERSHIPS_TABLE.local_name
    delivery_log_table: str = resources.DELIVERY_LOG_TABLE.local_name
    # Activation: where the destinations' configuration is (beside the handler in the
    # cloud), the destination queues' name prefix, and the destination a function serves.
    destinations_file: str = resources.DESTINATIONS_FILE
    destination_queue_prefix: str = resources.LOCAL_DESTINATION_QUEUE_PREFIX
    destination_id: str = ""
    # The first retry's backoff ceiling (doubling per attempt, full jitter, at most 15 min
    # between attempts): lower locally and in tests, so retries without Retry-After are quick.
    retry_base_seconds: float = Field(default=5.0, gt=0)
    # The deployment's destinations as "<id>:<type>,..." (the admin API's status pages).
    destination_types: str = ""
    event_stream: str = resources.EVENT_STREAM.local_name
    archive_bucket: str = resources.ARCHIVE_BUCKET.local_name
    sync_snapshot_bucket: str = resources.SYNC_SNAPSHOT_BUCKET.local_name
    event_retention_days: int = Field(default=90, ge=1)
    quarantine_retention_days: int = Field(default=30, ge=1)
    # How long a positive / negative write-key lookup is cached in a warm function.
    source_cache_seconds: int = Field(default=60, ge=0)
    # Identity resolution: identifier types, priorities, limits, blocked values, phone
    # region (JSON of cdp.identity.config.IdentityConfig; empty: the defaults).
    identity_config: str = ""
    # Keep the IP address in a profile's last context (it is personal data).
    keep_ip: bool = False
    # How long a warm function trusts the identity settings it read (an admin may change them).
    identity_config_cache_seconds: int = Field(default=60, ge=0)
    # The Profile API's space: the <space> of /v1/spaces/<space>/... that this
    # deployment answers, and that its access tokens must be bound to.
    space_id: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    # How long a positive / negative access-token lookup is cached (revocation delay).
    access_token_cache_seconds: int = Field(default=60, ge=0)
    # How long a warm function trusts the audience and computed trait definitions (and
    # aggregate specs) it read from the segments table (an admin may change them).
    segments_cache_seconds: int = Field(default=60, ge=0)
    # How long after a spec's ``live_from`` the backfill waits before reading the history:
    # an event received just before ``live_from`` may still be on its way through the
    # stream consumer (Kinesis, retries), so this must exceed the consumer's iterator age.
    backfill_settle_seconds: int = Field(default=900, ge=0)


ENV_VARS: dict[str, str] = {
    "sources_table": resources.SOURCES_TABLE.env,
    "events_table": resources.EVENTS_TABLE.env,
    "quarantine_table": resources.QUARANTINE_TABLE.env,
    "identity_table": resources.IDENTITY_TABLE.env,
    "segments_table": resources.SEGMENTS_TABLE.env,
    "memberships_table": resources.MEMBERSHIPS_TABLE.env,
    "delivery_log_table": resources.DELIVERY_LOG_TABLE.env,
    "destinations_file": resources.DESTINATIONS_FILE_ENV,
    "destination_queue_prefix": resources.DESTINATION_QUEUE_PREFIX_ENV,
    "destination_id": resources.DESTINATION_ID_ENV,
    "destination_types": "CDP_DESTINATION_TYPES",
    "retry_base_seconds": "CDP_RETRY_BASE_SECONDS",
    "event_stream": resources.EVENT_STREAM.env,
    "archive_bucket": resources.ARCHIVE_BUCKET.env,
    "sync_snapshot_bucket": resources.SYNC_SNAPSHOT_BUCKET.env,
    "event_retention_days": "CDP_EVENT_RETENTION_DAYS",
    "quarantine_retention_days": "CDP_QUARANTINE_RETENTION_DAYS",
    "source_cache_seconds": "CDP_SOURCE_CACHE_SECONDS",
    "identity_config": "CDP_IDENTITY_CONFIG",
    "keep_ip": "CDP_KEEP_IP",
    "identity_config_cache_seconds": "CDP_IDENTITY_CONFIG_CACHE_SECONDS",
    "space_id": "CDP_SPACE_ID",
    "access_token_cache_seconds": "CDP_ACCESS_TOKEN_CACHE_SECONDS",
    "segments_cache_seconds": "CDP_SEGMENTS_CACHE_SECONDS",
    "backfill_settle_seconds": "CDP_BACKFILL_SETTLE_SECONDS",
}


def identity_config(settings: Settings) -> IdentityConfig:
    """The deployment's identity resolution settings (defaults like Segment's)."""
    if not settings.identity_config.strip():
        return IdentityConfig()
    return IdentityConfig.model_validate_json(settings.identity_config)


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from environment variables; unset ones keep the local defaults."""
    env = os.environ if environ is None else environ
    values = {field: env[var] for field, var in ENV_VARS.items() if env.get(var)}
    return Settings.model_validate(values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return settings_from_env()
