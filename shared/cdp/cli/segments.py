"""``cdp audiences``, ``cdp traits`` and ``cdp backfills``: segmentation through the admin API (issue 4).

They talk HTTP to the admin API with an access token of scope ``admin`` (locally the
printed token), so a definition is validated exactly as the API validates it and an
invalid one is reported with the parts at fault.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from cdp.cli.deployment import Deployment
from cdp.local.stack import ACCESS_TOKEN_ENV, DEFAULT_ACCESS_TOKEN


class AdminApiClient:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self._base = url.rstrip("/") + "/v1/admin"
        self._auth = "Basic " + base64.b64encode(f"{token}:".encode()).decode("ascii")
        self._timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self._base + path, data=data, method=method, headers={
            "Authorization": self._auth, "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("error", {})
            except ValueError:
                raise click.ClickException(f"admin API answered {error.code} {error.reason}") from None
            lines = [f"admin API answered {error.code} {detail.get('code', '')}: {detail.get('message', '')}"]
            lines += [f"  {p.get('field')}: {p.get('reason')}" for p in detail.get("problems") or []]
            raise click.ClickException("\n".join(lines)) from None
        except urllib.error.URLError as error:
            raise click.ClickException(f"cannot reach the admin API at {self._base}: {error.reason}") from None


def _client(ctx: click.Context, access_token: str | None, url: str | None) -> AdminApiClient:
    deployment: Deployment = ctx.find_root().obj["deployment"]()
    token = access_token or (DEFAULT_ACCESS_TOKEN if deployment.is_local else None)
    if not token:
        raise click.UsageError(f"an admin access token is needed: --access-token or {ACCESS_TOKEN_ENV} "
                               "(create one with `cdp tokens create --admin NAME`)")
    return AdminApiClient(url or deployment.api_url, token)


def _definition_group(name: str, collection: str, noun: str) -> click.Group:
    @click.group(name=name, help=f"{noun.capitalize()} definitions, through the admin API.")
    @click.option("--access-token", envvar=ACCESS_TOKEN_ENV, help="Admin access token (locally the printed one).")
    @click.option("--url", help="API base URL (default: the stack's ApiUrl, or the local stack's).")
    @click.pass_context
    def group(ctx: click.Context, access_token: str | None, url: str | None) -> None:
        ctx.obj = {**(ctx.obj or {}), "admin": lambda: _client(ctx, access_token, url)}

    @group.command("create")
    @click.option("-f", "--file", "file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.pass_context
    def create(ctx: click.Context, file: Path) -> None:
        """Create from a JSON file (see examples/audiences/)."""
        result = ctx.obj["admin"]().call("POST", f"/{collection}", json.loads(file.read_text(encoding="utf-8")))
        click.echo(f"created {result['id']} (version {result['version']}): {result['summary']}")

    @group.command("update")
    @click.option("-f", "--file", "file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.pass_context
    def update(ctx: click.Context, file: Path) -> None:
        """Replace a definition with the JSON file's (same id)."""
        body = json.loads(file.read_text(encoding="utf-8"))
        result = ctx.obj["admin"]().call("PUT", f"/{collection}/{body.get('id', '')}", body)
        click.echo(f"updated {result['id']} (version {result['version']}): {result['summary']}")

    @group.command("list")
    @click.pass_context
    def list_(ctx: click.Context) -> None:
        """One line each: id, version, summary."""
        for item in ctx.obj["admin"]().call("GET", f"/{collection}")["data"]:
            click.echo(f"{item['id']}\tv{item['version']}\t{item.get('status', '')}\t{item['summary']}")

    @group.command("show")
    @click.argument("ident")
    @click.pass_context
    def show(ctx: click.Context, ident: str) -> None:
        """The definition as stored, with its summary."""
        click.echo(json.dumps(ctx.obj["admin"]().call("GET", f"/{collection}/{ident}"), indent=2,
                              ensure_ascii=False))

    @group.command("delete")
    @click.argument("ident")
    @click.pass_context
    def delete(ctx: click.Context, ident: str) -> None:
        ctx.obj["admin"]().call("DELETE", f"/{collection}/{ident}")
        click.echo(f"deleted {ident}")

    return group


audiences = _definition_group("audiences", "audiences", "audience")


@audiences.command("preview")
@click.option("-f", "--file", "file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def preview(ctx: click.Context, file: Path) -> None:
    """Estimated size and sample members of a draft (a JSON file; nothing is saved)."""
    result = ctx.obj["admin"]().call("POST", "/audiences/preview", json.loads(file.read_text(encoding="utf-8")))
    click.echo(f"{result['summary']}\n"
               f"estimated size: {result['estimated_size']} (+/- {result['estimate_margin']}), "
               f"{result['matching_in_sample']} of {result['sampled_profiles']} sampled profiles match")
    for profile_id in result["sample"]:
        click.echo(f"  {profile_id}")


@audiences.command("members")
@click.argument("ident")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Members per request.")
@click.option("--max", "most", type=click.IntRange(min=1), help="Stop after this many members.")
@click.pass_context
def members(ctx: click.Context, ident: str, limit: int, most: int | None) -> None:
    """The audience's current members, one profile id per line (every page, or --max)."""
    admin = ctx.obj["admin"]()
    cursor: str | None = None
    shown = 0
    while True:
        query = f"?limit={limit}" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        page = admin.call("GET", f"/audiences/{urllib.parse.quote(ident, safe='')}/members{query}")
        for member in page["data"]:
            if most is not None and shown >= most:
                return
            click.echo(member["profile_id"])
            shown += 1
        cursor = page.get("cursor")
        if not cursor:
            return
traits = _definition_group("traits", "computed-traits", "computed trait")


# --- cdp backfills ------------------------------------------------------------------------

BAR_WIDTH = 30


def progress_bar(progress: float, width: int = BAR_WIDTH) -> str:
    """``[#########.....]  62%``: a text bar for a progress from 0 to 1."""
    filled = round(max(0.0, min(progress, 1.0)) * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {progress * 100:3.0f}%"


def describe_run(run: dict[str, Any]) -> list[str]:
    """A backfill run (an item of ``GET /v1/admin/backfills``) as two lines of text."""
    ended = f", finished {run['finished_at']}" if run.get("finished_at") else ""
    return [
        f"{run['run_id']}\t{run['status']}\t{progress_bar(run['progress'])}\t"
        f"segments {run['segments_done']}/{run['segments_total']}\tscanned {run['scanned']} of ~{run['estimate']} "
        f"items\tprofiles {run['profiles']}\twritten {run['written']}",
        f"  specs {', '.join(sorted(run['specs']))}; started {run['started_at']}{ended}",
    ]


def _waiting_definitions(admin: AdminApiClient) -> list[str]:
    """Definitions whose aggregates are not backfilled yet (their run may not have started)."""
    waiting = []
    for collection in ("audiences", "computed-traits"):
        for item in admin.call("GET", f"/{collection}")["data"]:
            if item.get("status") in ("backfilling", "registering"):
                waiting.append(item["id"])
    return waiting


@click.command("backfills")
@click.option("--watch", is_flag=True, help="Show a progress bar until no backfill is running or waiting.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between polls with --watch.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --watch: give up after this many seconds.")
@click.option("--access-token", envvar=ACCESS_TOKEN_ENV, help="Admin access token (locally the printed one).")
@click.option("--url", help="API base URL (default: the stack's ApiUrl, or the local stack's).")
@click.pass_context
def backfills(ctx: click.Context, watch: bool, interval: float, timeout: float | None, access_token: str | None,
              url: str | None) -> None:
    """Backfill runs, the latest first: their specs, status and progress.

    A new audience or computed trait is ``ready`` once the backfill of the aggregates it
    reads is done; until then it shows ``backfilling``.
    """
    admin = _client(ctx, access_token, url)
    runs = admin.call("GET", "/backfills")["data"]
    if not watch:
        if not runs:
            click.echo("no backfill has run")
        for run in runs:
            for line in describe_run(run):
                click.echo(line)
        return
    started = time.monotonic()
    shown = ""
    while True:
        running = [r for r in runs if r["status"] == "running"]
        waiting = _waiting_definitions(admin)
        if running:
            run = running[0]
            line = (f"{run['run_id']} {progress_bar(run['progress'])} segments "
                    f"{run['segments_done']}/{run['segments_total']}, {run['scanned']} items scanned")
        elif waiting:
            line = f"waiting to start (settle time): {', '.join(sorted(waiting))}"
        else:
            for run in runs[:1]:
                for text in describe_run(run):
                    click.echo(text)
            click.echo("every definition is ready")
            return
        if line != shown:
            click.echo(line)
            shown = line
        if timeout is not None and time.monotonic() - started >= timeout:
            raise click.ClickException(f"still backfilling after {timeout:g} s")
        time.sleep(interval)
        runs = admin.call("GET", "/backfills")["data"]
