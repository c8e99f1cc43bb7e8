"""The definitions in force, and the aggregate states profiles keep for them.

The segments table holds, besides the definitions (``audience#<id>``,
``computed_trait#<id>``, see ``cdp.aws.definition_store``), one **spec item** per
aggregate spec some definition reads (``spec#<aggregate_id>``): the spec, its
generation ``gen`` and ``live_from``. The stream consumer folds an event into a spec's
state when the event was received at or after ``live_from``; the backfill
(``docs/segmentation.md``) computes the part before it from the history. The cut is by
the collector's ``receivedAt``, which never changes for an event, so the two halves never
overlap and never leave a gap, whichever consumer saw the definition first.

``live_from`` is the registration time plus twice the definitions' cache time plus a
clock margin: by then every warm consumer has read the new spec. A spec no definition
reads any more is deregistered; registered again later it gets a new ``gen``, and states
of an older generation are discarded rather than continued (they missed the events of
the gap).

Account activity specs (``account_activity`` conditions, ``cdp.segmentation.account_activity``)
are registered the same way as ``actspec#<activity_id>`` items (spec, ``gen``,
``live_from``) and listed apart (``Catalog.activity_specs``): they are kept on accounts,
not on profiles. They have a ``backfill`` status too: the backfill run unites the
history received before ``live_from`` into the accounts (``cdp.aws.backfill_store``).
Their states are set unions, so a state of an older generation is still true and is
continued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from cdp.aws.dynamo import all_items
from cdp.observability import logger
from cdp.segmentation.definitions import (
    AccountActivitySpec,
    AggregateSpec,
    AudienceDefinition,
    ComputedTraitDefinition,
)
from cdp.segmentation.evaluate import dependencies

SPEC_PREFIX = "spec#"
ACTIVITY_PREFIX = "actspec#"
# Consumer clocks may differ from the admin function's by this much.
CLOCK_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True)
class ActiveSpec:
    """An aggregate spec profiles keep a state for, from ``live_from`` (ISO 8601 UTC) on."""

    spec: AggregateSpec
    gen: str
    live_from: str
    backfill: str = "pending"  # pending | running | done


@dataclass(frozen=True)
class ActiveActivitySpec:
    """An account activity spec accounts keep, from ``live_from`` (ISO 8601 UTC) on."""

    spec: AccountActivitySpec
    gen: str
    live_from: str
    backfill: str = "pending"  # pending | running | done


@dataclass(frozen=True)
class Catalog:
    """Audiences, computed traits and the aggregate specs being kept, by id."""

    audiences: Mapping[str, AudienceDefinition] = field(default_factory=dict)
    computed_traits: Mapping[str, ComputedTraitDefinition] = field(default_factory=dict)
    specs: Mapping[str, ActiveSpec] = field(default_factory=dict)
    versions: Mapping[str, int] = field(default_factory=dict)  # "audience#<id>" -> version
    activity_specs: Mapping[str, ActiveActivitySpec] = field(default_factory=dict)

    def computed_spec_id(self, trait_id: str) -> str | None:
        definition = self.computed_traits.get(trait_id)
        return definition.aggregate.aggregate_id() if definition else None

    @property
    def empty(self) -> bool:
        return not self.specs and not self.audiences


def needed_specs(definitions: Iterable[AudienceDefinition | ComputedTraitDefinition]) -> dict[str, AggregateSpec]:
    """Every aggregate spec the definitions read, by aggregate id."""
    found: dict[str, AggregateSpec] = {}
    for definition in definitions:
        found.update(dependencies(definition).aggregates)
    return found


def needed_activity_specs(definitions: Iterable[AudienceDefinition | ComputedTraitDefinition],
                          ) -> dict[str, AccountActivitySpec]:
    """Every account activity spec the definitions read, by activity id."""
    found: dict[str, AccountActivitySpec] = {}
    for definition in definitions:
        found.update(dependencies(definition).activity)
    return found


def catalog_from_items(items: Iterable[dict[str, Any]]) -> Catalog:
    """The catalog of the segments table's items (definitions that fail to parse are skipped)."""
    audiences: dict[str, AudienceDefinition] = {}
    traits: dict[str, ComputedTraitDefinition] = {}
    registered: dict[str, ActiveSpec] = {}
    activity: dict[str, ActiveActivitySpec] = {}
    versions: dict[str, int] = {}
    for item in items:
        key = item["pk"]["S"]
        kind, _, ident = key.partition("#")
        try:
            if kind == "audience":
                audiences[ident] = AudienceDefinition.model_validate_json(item["definition"]["S"])
            elif kind == "computed_trait":
                traits[ident] = ComputedTraitDefinition.model_validate_json(item["definition"]["S"])
            elif key.startswith(SPEC_PREFIX):
                registered[ident] = _active(item)
                continue
            elif key.startswith(ACTIVITY_PREFIX):
                activity[key.removeprefix(ACTIVITY_PREFIX)] = _active_activity(item)
                continue
            else:
                continue
        except (ValidationError, KeyError):
            # Stored through the admin API, so valid when written; a definition from a newer
            # version of the language must not stop the pipeline.
            logger.warning("definition skipped", extra={"key": key})
            continue
        versions[key] = int(item.get("version", {}).get("N", "0"))
    wanted = needed_specs([*audiences.values(), *traits.values()])
    specs = {sid: active for sid, active in registered.items() if sid in wanted}
    wanted_activity = needed_activity_specs(audiences.values())
    activity_specs = {sid: active for sid, active in activity.items() if sid in wanted_activity}
    return Catalog(audiences, traits, specs, versions, activity_specs)


def _active(item: dict[str, Any]) -> ActiveSpec:
    return ActiveSpec(AggregateSpec.model_validate_json(item["spec"]["S"]), item["gen"]["S"],
                      item["live_from"]["S"], item.get("backfill", {}).get("S", "pending"))


def _active_activity(item: dict[str, Any]) -> ActiveActivitySpec:
    return ActiveActivitySpec(AccountActivitySpec.model_validate_json(item["spec"]["S"]), item["gen"]["S"],
                              item["live_from"]["S"], item.get("backfill", {}).get("S", "pending"))


class CatalogStore:
    """Reads the catalog from the segments table, at most once per ``cache_seconds``."""

    def __init__(self, dynamodb: Any, table_name: str, cache_seconds: float = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cached: tuple[float, Catalog] | None = None

    def current(self) -> Catalog:
        now = self._clock()
        if self._cached is None or now - self._cached[0] >= self._cache_seconds:
            self._cached = (now, catalog_from_items(self._scan()))
        return self._cached[1]

    def _scan(self) -> list[dict[str, Any]]:
        return all_items(self._ddb.scan, TableName=self._table, ConsistentRead=True)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SpecRegistry:
    """Keeps the spec items in step with the definitions (called by the admin API)."""

    def __init__(self, dynamodb: Any, table_name: str, cache_seconds: float = 60,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._ddb = dynamodb
        self._table = table_name
        self._delay = timedelta(seconds=2 * cache_seconds) + CLOCK_MARGIN
        self._now = now

    def sync(self, definitions: Iterable[AudienceDefinition | ComputedTraitDefinition]) -> dict[str, str]:
        """Register the specs the definitions read and drop the ones none reads.

        Returns the registered specs' ids and states (``new`` or ``kept``), for logs.
        """
        definitions = list(definitions)
        outcome = self._sync(SPEC_PREFIX, needed_specs(definitions))
        outcome.update(self._sync(ACTIVITY_PREFIX, needed_activity_specs(definitions)))
        return outcome

    def _sync(self, prefix: str, wanted: Mapping[str, AggregateSpec | AccountActivitySpec]) -> dict[str, str]:
        existing = {i["pk"]["S"].removeprefix(prefix) for i in self._spec_items(prefix)}
        outcome: dict[str, str] = {}
        for spec_id, spec in wanted.items():
            if spec_id in existing:
                outcome[spec_id] = "kept"
                continue
            now = self._now()
            item = {"pk": {"S": prefix + spec_id},
                    "spec": {"S": json.dumps(spec.model_dump(mode="json", exclude_none=True), sort_keys=True)},
                    "gen": {"S": _iso(now)}, "live_from": {"S": _iso(now + self._delay)},
                    "created_at": {"S": _iso(now)}, "backfill": {"S": "pending"}}
            try:
                self._ddb.put_item(TableName=self._table, Item=item,
                                   ConditionExpression="attribute_not_exists(pk)")
                outcome[spec_id] = "new"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                outcome[spec_id] = "kept"  # registered concurrently by another admin request
        for spec_id in existing - set(wanted):
            self._ddb.delete_item(TableName=self._table, Key={"pk": {"S": prefix + spec_id}})
        return outcome

    def registered(self) -> dict[str, ActiveSpec]:
        """The spec items, by aggregate id."""
        return {i["pk"]["S"].removeprefix(SPEC_PREFIX): _active(i) for i in self._spec_items(SPEC_PREFIX)}

    def registered_activity(self) -> dict[str, ActiveActivitySpec]:
        """The account activity spec items, by activity id."""
        return {i["pk"]["S"].removeprefix(ACTIVITY_PREFIX): _active_activity(i)
                for i in self._spec_items(ACTIVITY_PREFIX)}

    def _spec_items(self, prefix: str) -> list[dict[str, Any]]:
        return all_items(self._ddb.scan, TableName=self._table, ConsistentRead=True,
                         FilterExpression="begins_with(pk, :p)", ExpressionAttributeValues={":p": {"S": prefix}})
