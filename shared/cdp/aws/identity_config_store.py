"""The identity resolution settings in force: the deployment's, or the ones an admin set.

The deployment sets the defaults (CDK context ``identity_config``, passed to the
functions as ``CDP_IDENTITY_CONFIG``); an admin may replace them at run time through
the admin API, which stores them in the identity table under ``config#identity``. The
consumer reads that item at most once a minute per warm function, so a change reaches
every consumer within a minute and applies to the events processed from then on
(profiles already merged stay merged).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cdp.identity.config import IdentityConfig

CONFIG_KEY = "config#identity"


class IdentityConfigStore:
    def __init__(self, dynamodb: Any, table_name: str, default: IdentityConfig, cache_seconds: float = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._default = default
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cached: tuple[float, IdentityConfig, str] | None = None

    def current(self) -> IdentityConfig:
        """The settings in force (cached for ``cache_seconds``)."""
        now = self._clock()
        if self._cached is None or now - self._cached[0] >= self._cache_seconds:
            config, origin = self._read()
            self._cached = (now, config, origin)
        return self._cached[1]

    def describe(self) -> dict[str, Any]:
        """The settings in force and where they come from (``deployment`` or ``admin``)."""
        config, origin = self._read()
        return {"origin": origin, "config": config.model_dump(mode="json")}

    def _read(self) -> tuple[IdentityConfig, str]:
        item = self._ddb.get_item(TableName=self._table, Key={"pk": {"S": CONFIG_KEY}},
                                  ConsistentRead=True).get("Item")
        if item is None:
            return self._default, "deployment"
        return IdentityConfig.model_validate_json(item["config"]["S"]), "admin"

    def put(self, config: IdentityConfig) -> None:
        """Replace the settings (validated by the model before they get here)."""
        self._ddb.put_item(TableName=self._table, Item={
            "pk": {"S": CONFIG_KEY}, "config": {"S": config.model_dump_json()},
            "updated_at": {"S": datetime.now(UTC).isoformat(timespec="seconds")}})
        self._cached = None

    def reset(self) -> None:
        """Back to the deployment's settings."""
        self._ddb.delete_item(TableName=self._table, Key={"pk": {"S": CONFIG_KEY}})
        self._cached = None
