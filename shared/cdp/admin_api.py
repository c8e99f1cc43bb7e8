"""The admin API: the identity resolution settings of a deployment, at run time.

    GET    /v1/admin/identity-config   the settings in force and where they come from
    PUT    /v1/admin/identity-config   replace them (a JSON ``IdentityConfig``; validated)
    DELETE /v1/admin/identity-config   back to the deployment's settings (CDK context)

Authentication: an access token of scope ``admin`` for the deployment's space, as the
HTTP Basic username (``cdp tokens create --admin``); read tokens get 403. Consumers pick
a change up within a minute (``cdp.aws.identity_config_store``); it applies to events
processed from then on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from cdp.access_tokens import AccessToken, authorize, token_from_authorization
from cdp.identity.config import IdentityConfig

IDENTITY_CONFIG_PATH = "/v1/admin/identity-config"
MAX_BODY_BYTES = 64 * 1024
HEADERS = {"Cache-Control": "no-store"}
WWW_AUTHENTICATE = 'Basic realm="cdp admin API"'


class ConfigStore(Protocol):
    def describe(self) -> dict[str, Any]: ...
    def put(self, config: IdentityConfig) -> None: ...
    def reset(self) -> None: ...


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


class AdminApi:
    def __init__(self, find_token: Callable[[str], AccessToken | None], space_id: str, store: ConfigStore) -> None:
        self._find_token = find_token
        self._space = space_id
        self._store = store

    def handle(self, method: str, path: str, body: str | None, authorization: str | None) -> AdminResponse:
        token_text = token_from_authorization(authorization)
        token = self._find_token(token_text) if token_text else None
        decision = authorize(token, self._space)
        if decision == "unauthenticated":
            return _error(401, "authentication_error",
                          "An admin access token is required as the HTTP Basic username (cdp tokens create --admin).")
        if decision == "forbidden" or token is None or token.scope != "admin":
            return _error(403, "forbidden", "This access token may not use the admin API (it needs scope admin).")
        if path.rstrip("/") != IDENTITY_CONFIG_PATH:
            return _error(404, "not_found", f"No such path; the admin API has {IDENTITY_CONFIG_PATH}.")
        method = method.upper()
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
        if not body:
            return _error(400, "validation_error", "The body must be the identity settings as JSON.")
        if len(body.encode("utf-8")) > MAX_BODY_BYTES:
            return _error(413, "too_large", f"The settings must be under {MAX_BODY_BYTES} bytes.")
        try:
            data = json.loads(body)
        except ValueError:
            return _error(400, "validation_error", "The body is not JSON.")
        if not isinstance(data, dict):
            return _error(400, "validation_error", "The body must be a JSON object.")
        try:
            config = IdentityConfig.model_validate(data)
        except ValidationError as exc:
            problems = [{"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()]
            return _error(400, "validation_error", "The identity settings are not valid.", problems=problems)
        self._store.put(config)
        return AdminResponse(200, self._store.describe())
