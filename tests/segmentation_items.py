"""Identity-table profile items in the stored shape, and catalogs, for segmentation tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cdp.identity.profile_state import ProfileState, TraitValue, state_to_json
from cdp.segmentation.catalog import ActiveSpec, Catalog, needed_specs
from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition
from cdp.segmentation.tallies import Tallies, fold_events, tallies_to_json

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def audience(audience_id: str, condition: dict[str, Any], name: str | None = None) -> AudienceDefinition:
    return AudienceDefinition.model_validate({"id": audience_id, "name": name or audience_id.title(),
                                              "condition": condition})


def computed_trait(trait_id: str, aggregate: dict[str, Any]) -> ComputedTraitDefinition:
    return ComputedTraitDefinition.model_validate({"id": trait_id, "name": trait_id, "aggregate": aggregate})


def catalog_of(*definitions: AudienceDefinition | ComputedTraitDefinition) -> Catalog:
    """A catalog whose specs are all live since long ago (gen "g1")."""
    audiences = {d.id: d for d in definitions if isinstance(d, AudienceDefinition)}
    traits = {d.id: d for d in definitions if isinstance(d, ComputedTraitDefinition)}
    specs = {sid: ActiveSpec(spec, "g1", "2000-01-01T00:00:00.000Z")
             for sid, spec in needed_specs(definitions).items()}
    return Catalog(audiences, traits, specs)


def track(event: str, at: str = "2026-11-28T10:00:00.000Z", **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "properties": properties, "timestamp": at, "receivedAt": at,
            "messageId": f"m-{event}-{at}-{json.dumps(properties, sort_keys=True)}"}


def agg_of(catalog: Catalog, events: list[dict[str, Any]], now: datetime = NOW) -> str:
    return tallies_to_json(fold_events(Tallies(), catalog.specs, [(None, e) for e in events], now))


def state_of(**traits: Any) -> str:
    return state_to_json(ProfileState(traits={k: TraitValue(v, "2026-11-28T00:00:00.000Z", "m")
                                              for k, v in traits.items()}))


def profile_item(profile_id: str, *, version: int = 1, traits: dict[str, Any] | None = None,
                 agg: str | None = None, ids: tuple[str, ...] = ("ident#user_id:u1",),
                 status: str = "live", merged_into: str | None = None) -> dict[str, Any]:
    """A ``prof#`` item as the identity graph writes it (DynamoDB JSON)."""
    item: dict[str, Any] = {"pk": {"S": f"prof#{profile_id}"}, "status": {"S": status},
                            "version": {"N": str(version)}, "ids": {"SS": list(ids)},
                            "state": {"S": state_of(**(traits or {}))},
                            "created_at": {"S": "2026-11-01T00:00:00.000Z"},
                            "updated_at": {"S": "2026-11-28T00:00:00.000Z"}}
    if agg is not None:
        item["agg"] = {"S": agg}
    if merged_into:
        item["merged_into"] = {"S": merged_into}
    return item


def home_item(anonymous_id: str, profile_id: str, *, version: int = 1, traits: dict[str, Any] | None = None,
              agg: str | None = None) -> dict[str, Any]:
    """A home profile: its anonymous id's identifier item with ``solo``."""
    item: dict[str, Any] = {"pk": {"S": f"ident#anonymous_id:{anonymous_id}"}, "profile_id": {"S": profile_id},
                            "solo": {"BOOL": True}, "version": {"N": str(version)},
                            "state": {"S": state_of(**(traits or {}))}}
    if agg is not None:
        item["agg"] = {"S": agg}
    return item


def merged_home_item(anonymous_id: str, survivor: str) -> dict[str, Any]:
    """The home item after its profile was merged into ``survivor``: a plain pointer."""
    return {"pk": {"S": f"ident#anonymous_id:{anonymous_id}"}, "profile_id": {"S": survivor}}
