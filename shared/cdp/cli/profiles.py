"""``cdp profile get`` (through the Profile API) and ``cdp tokens`` (access tokens)."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

import click

from cdp.access_tokens import AccessTokenRegistry, valid_space_id
from cdp.cli.deployment import Deployment
from cdp.local.stack import ACCESS_TOKEN_ENV, DEFAULT_ACCESS_TOKEN

MAX_PAGES = 50  # of traits or external ids: 10,000 traits, 5,000 ids


def _deployment(ctx: click.Context) -> Deployment:
    return ctx.find_root().obj["deployment"]()  # type: ignore[no-any-return]


class ProfileApiClient:
    """A small client of the Profile API (HTTP Basic with the token as username)."""

    def __init__(self, url: str, space: str, token: str, timeout: float = 30.0) -> None:
        self._base = url.rstrip("/")
        self._space = space
        self._auth = "Basic " + base64.b64encode(f"{token}:".encode()).decode("ascii")
        self._timeout = timeout

    def get(self, collection: str, identifier: str, resource: str, **query: str) -> dict[str, Any]:
        # "+" must travel as %2B; ":" and "@" may stay as they are (as in Segment's examples).
        path = (f"/v1/spaces/{quote(self._space, safe='')}/collections/{collection}/profiles/"
                f"{quote(identifier, safe=':@')}/{resource}")
        url = self._base + path + (f"?{urlencode(query)}" if query else "")
        request = urllib.request.Request(url, headers={"Authorization": self._auth, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("error", {})
                message = f"{error.code} {detail.get('code', '')}: {detail.get('message', '')}"
            except (ValueError, AttributeError):
                message = f"{error.code} {error.reason}"
            raise click.ClickException(f"Profile API answered {message}") from None
        except urllib.error.URLError as error:
            raise click.ClickException(f"cannot reach the Profile API at {self._base}: {error.reason}") from None

    def every(self, collection: str, identifier: str, resource: str, key: str, limit: int) -> Any:
        """All pages of a list (``key``: the field holding the items)."""
        merged: Any = {} if key == "traits" else []
        query = {"limit": str(limit)}
        for _ in range(MAX_PAGES):
            page = self.get(collection, identifier, resource, **query)
            if key == "traits":
                merged.update(page[key])
            else:
                merged.extend(page[key])
            cursor = page.get("cursor") or {}
            if not cursor.get("has_more"):
                break
            query["next"] = cursor["next"]
        return merged


@click.group()
def profile() -> None:
    """Read profiles through the Profile API."""


@profile.command("get")
@click.argument("identifier")
@click.option("--space", envvar="CDP_SPACE", help="Space id (default: the deployment's; locally 'default').")
@click.option("--access-token", envvar=ACCESS_TOKEN_ENV,
              help=f"Profile API access token (env {ACCESS_TOKEN_ENV}; locally the printed local token).")
@click.option("--url", help="Profile API base URL (default: the stack's ApiUrl, or the local stack's).")
@click.option("--events", "event_count", default=10, show_default=True, type=click.IntRange(0, 100),
              help="How many recent events to show.")
@click.pass_context
def profile_get(ctx: click.Context, identifier: str, space: str | None, access_token: str | None,
                url: str | None, event_count: int) -> None:
    """Print a profile as JSON: traits, identifiers, metadata, accounts and recent events.

    IDENTIFIER is <type>:<value>, e.g. email:ana@example.com, user_id:u123, profile_id:<id>;
    group_id:<groupId> reads an account (traits, metadata, members).
    """
    deployment = _deployment(ctx)
    token = access_token or (DEFAULT_ACCESS_TOKEN if deployment.is_local else None)
    if not token:
        raise click.UsageError(f"an access token is needed: --access-token or {ACCESS_TOKEN_ENV} "
                               "(create one with `cdp tokens create`)")
    api = ProfileApiClient(url or deployment.api_url, space or deployment.space_id, token)
    if identifier.partition(":")[0].strip().lower() == "group_id":
        result: dict[str, Any] = {
            "identifier": identifier,
            "traits": api.every("accounts", identifier, "traits", "traits", 200),
            "metadata": api.get("accounts", identifier, "metadata")["metadata"],
            "members": api.get("accounts", identifier, "links", limit="100")["data"],
        }
    else:
        metadata = api.get("users", identifier, "metadata")["metadata"]
        result = {
            "identifier": identifier,
            "profile_id": metadata.get("profile_id"),
            "traits": api.every("users", identifier, "traits", "traits", 200),
            "external_ids": api.every("users", identifier, "external_ids", "data", 100),
            "metadata": metadata,
            "accounts": [link["external_ids"][0]["id"]
                         for link in api.get("users", identifier, "links", limit="100")["data"]],
            "events": api.get("users", identifier, "events", limit=str(event_count))["data"] if event_count else [],
        }
    click.echo(json.dumps(result, indent=2, ensure_ascii=False, sort_keys=False))


# --- tokens ---------------------------------------------------------------------------------


@click.group()
def tokens() -> None:
    """Profile API access tokens (only SHA-256 hashes are stored)."""


def _registry(ctx: click.Context) -> tuple[AccessTokenRegistry, Deployment]:
    deployment = _deployment(ctx)
    return AccessTokenRegistry(deployment.table(deployment.sources_table)), deployment


@tokens.command("create")
@click.argument("name")
@click.option("--space", help="The space the token may read (default: the deployment's).")
@click.option("--admin", is_flag=True, help="Also allow the admin API (identity settings); default read-only.")
@click.pass_context
def tokens_create(ctx: click.Context, name: str, space: str | None, admin: bool) -> None:
    """Create a token (read-only unless --admin); prints it once (it cannot be shown again)."""
    registry, deployment = _registry(ctx)
    space_id = space or deployment.space_id
    if not valid_space_id(space_id):
        raise click.BadParameter("1-64 letters, digits, '-' or '_'", param_hint="--space")
    token, secret = registry.create_token(name, space_id, scope="admin" if admin else "read")
    click.echo(json.dumps({"token_id": token.token_id, "name": token.name, "space_id": token.space_id,
                           "scope": token.scope, "access_token": secret}))
    if sys.stderr.isatty():
        click.echo("Store the access token now: only its hash is kept.", err=True)


@tokens.command("list")
@click.pass_context
def tokens_list(ctx: click.Context) -> None:
    """Every token: id, state, space, name, created (never the token itself)."""
    registry, _ = _registry(ctx)
    for token in registry.list_tokens():
        state = "active" if token.enabled else f"revoked {token.revoked_at}".rstrip()
        click.echo(f"{token.token_id}\t{state}\t{token.space_id}\t{token.name}\t{token.created_at}")


@tokens.command("revoke")
@click.argument("token_id")
@click.pass_context
def tokens_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token for good (refused within the Profile API's cache time, 60 s)."""
    registry, _ = _registry(ctx)
    if not registry.revoke(token_id):
        raise click.ClickException(f"no token {token_id}")
    click.echo(f"revoked {token_id}")
