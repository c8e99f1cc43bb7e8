"""The admin API: identity resolution settings, audience and computed trait definitions.

    GET    /v1/admin/identity-config   the settings in force and where they come from
    PUT    /v1/admin/identity-config   replace them (a JSON ``IdentityConfig``; validated)
    DELETE /v1/admin/identity-config   back to the deployment's settings (CDK context)

    GET    /v1/admin/audiences                 every audience definition, with a summary
    POST   /v1/admin/audiences                 create one (409 if the id exists)
    GET    /v1/admin/audiences/<id>            one
    PUT    /v1/admin/audiences/<id>            replace it (``If-Match: <version>`` guards
                                               against overwriting someone else's change)
    DELETE /v1/admin/audiences/<id>            remove it
    GET    /v1/admin/audiences/<id>/members    its current members (``limit`` 1-1000, ``cursor``)
    POST   /v1/admin/audiences/preview         a draft's estimated size and sample members (nothing saved)
    ... and the same under /v1/admin/computed-traits (without members).
    GET    /v1/admin/profiles/<profile id>/audiences   a profile's memberships, current and former
    GET    /v1/admin/backfills                 every backfill run, the latest first: its specs,
                                               status and progress (``cdp backfills``)
    GET    /v1/admin/destinations              every activation destination's delivery log totals
                                               (``hours``, default 24) and queue depths
    GET    /v1/admin/destinations/<id>         one (``cdp destinations status``)

Definitions are validated by ``cdp.segmentation.definitions``; an invalid one gets a 400
whose ``problems`` point at the offending part. Every change registers the aggregate
specs the definitions read, aggregate and account activity specs
(``cdp.segmentation.catalog.SpecRegistry``): consumers keep their states from
``live_from`` on, and a definition's ``status`` is ``ready`` once the backfill of its
specs (the events before ``live_from``) is done, ``backfilling`` before.

Authentication: an access token of scope ``admin`` for the deployment's space, as the
HTTP Basic username (``cdp tokens create --admin``); read tokens get 403. Consumers pick
a change up within a minute (``cdp.aws.identity_config_store``); it applies to events
processed from then on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from cdp.access_tokens import AccessToken, authorize, token_from_authorization
from cdp.aws.definition_store import DefinitionConflict, Kind, StoredDefinition
from cdp.identity.config import IdentityConfig
from cdp.segmentation.backfill import BackfillProgress
from cdp.segmentation.catalog import ActiveActivitySpec, ActiveSpec
from cdp.segmentation.definitions import AudienceDefinition, ComputedTraitDefinition, problems
from cdp.segmentation.evaluate import dependencies

IDENTITY_CONFIG_PATH = "/v1/admin/identity-config"
DEFINITION_PATHS: dict[str, Kind] = {"/v1/admin/audiences": "audience", "/v1/admin/computed-traits": "computed_trait"}
MODELS: dict[str, type[AudienceDefinition] | type[ComputedTraitDefinition]] = {
    "audience": AudienceDefinition, "computed_trait": ComputedTraitDefinition}
MAX_BODY_BYTES = 64 * 1024
MAX_MEMBERS_PAGE = 1000
PREVIEW_PATH = "/v1/admin/audiences/preview"
MEMBERSHIP_PATH = re.compile(r"/v1/admin/audiences/(?P<audience>[^/]+)/members|"
                             r"/v1/admin/profiles/(?P<profile>[^/]+)/audiences")
BACKFILLS_PATH = "/v1/admin/backfills"
DESTINATIONS_PATH = "/v1/admin/destinations"
HEADERS = {"Cache-Control": "no-store"}
WWW_AUTHENTICATE = 'Basic realm="cdp admin API"'


class ConfigStore(Protocol):
    def describe(self) -> dict[str, Any]: ...
    def put(self, config: IdentityConfig) -> None: ...
    def reset(self) -> None: ...


class Specs(Protocol):
    def sync(self, definitions: list[AudienceDefinition | ComputedTraitDefinition]) -> dict[str, str]: ...
    def registered(self) -> dict[str, ActiveSpec]: ...
    def registered_activity(self) -> dict[str, ActiveActivitySpec]: ...


@dataclass(frozen=True)
class Registered:
    """The spec items as registered: aggregate specs and account activity specs, by id."""

    specs: dict[str, ActiveSpec]
    activity: dict[str, ActiveActivitySpec] = field(default_factory=dict)


class Memberships(Protocol):
    def members(self, audience_id: str, limit: int = 100, cursor: str | None = None) -> Any: ...
    def of_profile(self, profile_id: str) -> dict[str, Any]: ...


class Definitions(Protocol):
    def get(self, kind: Kind, ident: str) -> StoredDefinition | None: ...
    def list(self, kind: Kind) -> list[StoredDefinition]: ...
    def put(self, kind: Kind, ident: str, definition: str, expected_version: int | None) -> StoredDefinition: ...
    def delete(self, kind: Kind, ident: str) -> bool: ...


@dataclass(frozen=True)
class AdminResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=lambda: dict(HEADERS))


def _error(status: int, code: str, message: str, **extra: Any) -> AdminResponse:
    headers = dict(HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return AdminResponse(status, {"error": {"code": code, "message": message, **extra}}, headers)


def _view(stored: StoredDefinition, specs: Registered | None = None) -> dict[str, Any]:
    definition = MODELS[stored.kind].model_validate_json(stored.definition)
    view = {"id": stored.id, "kind": stored.kind, "version": stored.version, "summary": definition.summary(),
            "definition": json.loads(stored.definition), "created_at": stored.created_at,
            "updated_at": stored.updated_at}
    if specs is not None:
        view.update(_readiness(definition, specs))
        if view["status"] == "ready" and stored.kind == "audience" and stored.evaluated_version != stored.version:
            view["status"] = "evaluating"  # existing profiles are being evaluated (cdp.aws.audience_pass)
    return view


def _readiness(definition: AudienceDefinition | ComputedTraitDefinition, specs: Registered) -> dict[str, Any]:
    """``ready`` once every aggregate and account activity spec the definition reads is
    complete (its backfill done)."""
    reads = dependencies(definition)
    kept: list[ActiveSpec | ActiveActivitySpec] = [specs.specs[i] for i in reads.aggregates if i in specs.specs]
    kept += [specs.activity[i] for i in reads.activity if i in specs.activity]
    if len(kept) < len(reads.aggregates) + len(reads.activity):
        return {"status": "registering"}
    if all(s.backfill == "done" for s in kept):
        return {"status": "ready"}
    return {"status": "backfilling", "live_from": max(s.live_from for s in kept)}


def _parse_body(body: str | None) -> dict[str, Any] | AdminResponse:
    if not body:
        return _error(400, "validation_error", "The body must be a JSON object.")
    if len(body.encode("utf-8")) > MAX_BODY_BYTES:
        return _error(413, "too_large", f"The body must be under {MAX_BODY_BYTES} bytes.")
    try:
        data = json.loads(body)
    except ValueError:
        return _error(400, "validation_error", "The body is not JSON.")
    if not isinstance(data, dict):
        return _error(400, "validation_error", "The body must be a JSON object.")
    return data


class AdminApi:
    def __init__(self, find_token: Callable[[str], AccessToken | None], space_id: str, store: ConfigStore,
                 definitions: Definitions | None = None, specs: Specs | None = None,
                 memberships: Memberships | None = None,
                 backfills: Callable[[], list[BackfillProgress]] | None = None,
                 preview: Callable[[AudienceDefinition], dict[str, Any]] | None = None,
                 destinations: Callable[[str | None, int], list[dict[str, Any]] | None] | None = None) -> None:
        self._preview = preview
        self._destinations = destinations
        self._memberships = memberships
        self._backfills = backfills
        self._find_token = find_token
        self._space = space_id
        self._store = store
        self._definitions = definitions
        self._specs = specs

    def _preview_draft(self, body: str | None) -> AdminResponse:
        assert self._preview is not None
        data = _parse_body(body)
        if isinstance(data, AdminResponse):
            return data
        draft = self._validated("audience", {"id": "preview", "name": "Preview", **data})
        if isinstance(draft, AdminResponse):
            return draft
        assert isinstance(draft, AudienceDefinition)
        return AdminResponse(200, {"summary": draft.summary(), **self._preview(draft)})

    def _members(self, audience_id: str, query: dict[str, str]) -> AdminResponse:
        assert self._memberships is not None and self._definitions is not None
        if self._definitions.get("audience", audience_id) is None:
            return _error(404, "not_found", "No such audience.")
        limit_text = query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_MEMBERS_PAGE:
            return _error(400, "validation_error", f"limit must be a whole number from 1 to {MAX_MEMBERS_PAGE}.")
        try:
            page = self._memberships.members(audience_id, int(limit_text), query.get("cursor") or None)
        except ValueError:
            return _error(400, "validation_error", "cursor is not one this API returned for this audience.")
        return AdminResponse(200, {"data": [{"profile_id": pid} for pid in page.profile_ids],
                                   "cursor": page.cursor})

    def _profile_audiences(self, profile_id: str) -> AdminResponse:
        assert self._memberships is not None
        memberships = self._memberships.of_profile(profile_id)
        return AdminResponse(200, {"profile_id": profile_id, "data": [
            {"audience_id": aid, "member": m.member, "entered_at": m.entered_at, "exited_at": m.exited_at}
            for aid, m in sorted(memberships.items())]})

    def _destination_status(self, method: str, destination_id: str | None, query: dict[str, str]) -> AdminResponse:
        assert self._destinations is not None
        if method != "GET":
            return AdminResponse(405, {"error": {"code": "method_not_allowed", "message": "Use GET."}},
                                 {**HEADERS, "Allow": "GET"})
        hours_text = query.get("hours", "24")
        if not hours_text.isdigit() or not 1 <= int(hours_text) <= 24 * 90:
            return _error(400, "validation_error", "hours must be a whole number from 1 to 2160 (90 days).")
        found = self._destinations(destination_id, int(hours_text))
        if found is None:
            return _error(404, "not_found", "No such destination.")
        return AdminResponse(200, found[0] if destination_id is not None else {"data": found})

    def _sync_specs(self) -> None:
        """Register the specs every definition reads, drop the ones none reads any more."""
        if self._specs is None or self._definitions is None:
            return
        models: list[AudienceDefinition | ComputedTraitDefinition] = []
        for kind, model in MODELS.items():
            models.extend(model.model_validate_json(d.definition) for d in self._definitions.list(kind))  # type: ignore[arg-type]
        self._specs.sync(models)

    def _registered(self) -> Registered | None:
        if self._specs is None:
            return None
        return Registered(self._specs.registered(), self._specs.registered_activity())

    def handle(self, method: str, path: str, body: str | None, authorization: str | None,
               headers: dict[str, str] | None = None, query: dict[str, str] | None = None) -> AdminResponse:
        token_text = token_from_authorization(authorization)
        token = self._find_token(token_text) if token_text else None
        decision = authorize(token, self._space)
        if decision == "unauthenticated":
            return _error(401, "authentication_error",
                          "An admin access token is required as the HTTP Basic username (cdp tokens create --admin).")
        if decision == "forbidden" or token is None or token.scope != "admin":
            return _error(403, "forbidden", "This access token may not use the admin API (it needs scope admin).")
        path = path.rstrip("/")
        method = method.upper()
        collection, _, ident = path.rpartition("/")
        if self._preview is not None and path == PREVIEW_PATH and method == "POST":
            return self._preview_draft(body)
        if self._memberships is not None and (found := MEMBERSHIP_PATH.fullmatch(path)):
            if method != "GET":
                return AdminResponse(405, {"error": {"code": "method_not_allowed", "message": "Use GET."}},
                                     {**HEADERS, "Allow": "GET"})
            if found["audience"]:
                return self._members(found["audience"], query or {})
            return self._profile_audiences(found["profile"])
        if self._backfills is not None and path == BACKFILLS_PATH:
            if method != "GET":
                return AdminResponse(405, {"error": {"code": "method_not_allowed", "message": "Use GET."}},
                                     {**HEADERS, "Allow": "GET"})
            return AdminResponse(200, {"data": [run.as_dict() for run in self._backfills()]})
        if self._destinations is not None and (path == DESTINATIONS_PATH or collection == DESTINATIONS_PATH):
            return self._destination_status(method, ident if collection == DESTINATIONS_PATH else None, query or {})
        if self._definitions is not None and path in DEFINITION_PATHS:
            return self._collection(method, DEFINITION_PATHS[path], body)
        if self._definitions is not None and collection in DEFINITION_PATHS and ident:
            return self._definition(method, DEFINITION_PATHS[collection], ident, body, headers or {})
        if path != IDENTITY_CONFIG_PATH:
            return _error(404, "not_found", f"No such path; the admin API has {IDENTITY_CONFIG_PATH}, "
                          f"{', '.join(DEFINITION_PATHS)}.")
        if method == "GET":
            return AdminResponse(200, self._store.describe())
        if method == "DELETE":
            self._store.reset()
            return AdminResponse(200, self._store.describe())
        if method == "PUT":
            return self._put(body)
        return AdminResponse(405, {"error": {"code": "method_not_allowed", "message": "Use GET, PUT or DELETE."}},
                             {**HEADERS, "Allow": "GET, PUT, DELETE"})

    def _put(self, body: str | None) -> AdminResponse:
        data = _parse_body(body)
        if isinstance(data, AdminResponse):
            return data
        try:
            config = IdentityConfig.model_validate(data)
        except ValidationError as exc:
            return _error(400, "validation_error", "The identity settings are not valid.", problems=problems(exc))
        self._store.put(config)
        return AdminResponse(200, self._store.describe())

    # --- audience and computed trait definitions --------------------------------------------

    def _validated(self, kind: Kind, data: dict[str, Any]) -> AudienceDefinition | ComputedTraitDefinition | \
            AdminResponse:
        try:
            return MODELS[kind].model_validate(data)
        except ValidationError as exc:
            return _error(400, "validation_error", f"The {kind.replace('_', ' ')} definition is not valid.",
                          problems=problems(exc))

    def _collection(self, method: str, kind: Kind, body: str | None) -> AdminResponse:
        assert self._definitions is not None
        if method == "GET":
            specs = self._registered()
            return AdminResponse(200, {"data": [_view(d, specs) for d in self._definitions.list(kind)]})
        if method != "POST":
            return AdminResponse(405, {"error": {"code": "method_not_allowed", "message": "Use GET or POST."}},
                                 {**HEADERS, "Allow": "GET, POST"})
        data = _parse_body(body)
        if isinstance(data, AdminResponse):
            return data
        definition = self._validated(kind, data)
        if isinstance(definition, AdminResponse):
            return definition
        try:
            stored = self._definitions.put(kind, definition.id, definition.model_dump_json(), None)
        except DefinitionConflict:
            return _error(409, "conflict", f"A {kind.replace('_', ' ')} with id {definition.id!r} exists; "
                          "PUT to its path to change it.")
        self._sync_specs()
        return AdminResponse(201, _view(stored, self._registered()))

    def _definition(self, method: str, kind: Kind, ident: str, body: str | None,
                    headers: dict[str, str]) -> AdminResponse:
        assert self._definitions is not None
        current = self._definitions.get(kind, ident)
        if method == "GET":
            return AdminResponse(200, _view(current, self._registered())) if current else \
                _error(404, "not_found", "No such definition.")
        if method == "DELETE":
            if not self._definitions.delete(kind, ident):
                return _error(404, "not_found", "No such definition.")
            self._sync_specs()
            return AdminResponse(200, {"deleted": ident})
        if method != "PUT":
            return AdminResponse(405, {"error": {"code": "method_not_allowed", "message": "Use GET, PUT or DELETE."}},
                                 {**HEADERS, "Allow": "GET, PUT, DELETE"})
        if current is None:
            return _error(404, "not_found", "No such definition; POST to the collection to create it.")
        data = _parse_body(body)
        if isinstance(data, AdminResponse):
            return data
        definition = self._validated(kind, {**data, "id": data.get("id", ident)})
        if isinstance(definition, AdminResponse):
            return definition
        if definition.id != ident:
            return _error(400, "validation_error", "The definition's id must be the one in the path.",
                          problems=[{"field": "id", "reason": f"expected {ident!r}"}])
        match = {k.lower(): v for k, v in headers.items()}.get("if-match")
        expected = current.version
        if match is not None:
            if not match.strip('"').isdigit():
                return _error(400, "validation_error", "If-Match must be the version number read.")
            expected = int(match.strip('"'))
        try:
            stored = self._definitions.put(kind, ident, definition.model_dump_json(), expected)
        except DefinitionConflict:
            return _error(409, "conflict", "The definition changed since that version; read it again.")
        self._sync_specs()
        return AdminResponse(200, _view(stored, self._registered()))
