"""Operator commands: sources and write keys, quarantine, dead letters, file import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cdp.aws.quarantine_store import QuarantineStore
from cdp.cli.deployment import Deployment
from cdp.importer import ApiClient, ImportFailed, read_rows, run_import
from cdp.redrive import peek, redrive
from cdp.sources import SourceRegistry


def _deployment(ctx: click.Context) -> Deployment:
    return ctx.find_root().obj["deployment"]()  # type: ignore[no-any-return]


# --- sources --------------------------------------------------------------------------


@click.group()
def sources() -> None:
    """Sources and their write keys."""


@sources.command("create")
@click.argument("name")
@click.option("--write-key", help="Use this key instead of generating one (e.g. when migrating).")
@click.pass_context
def sources_create(ctx: click.Context, name: str, write_key: str | None) -> None:
    """Create a source; prints its write key once (only a hash is stored)."""
    deployment = _deployment(ctx)
    source, key = SourceRegistry(deployment.table(deployment.sources_table)).create_source(name, write_key)
    click.echo(json.dumps({"source_id": source.source_id, "name": source.name, "write_key": key}))


@sources.command("list")
@click.pass_context
def sources_list(ctx: click.Context) -> None:
    deployment = _deployment(ctx)
    for source in SourceRegistry(deployment.table(deployment.sources_table)).list_sources():
        state = "enabled" if source.enabled else "disabled"
        click.echo(f"{source.source_id}\t{state}\t{source.name}\t{source.created_at}")


@sources.command("disable")
@click.argument("source_id")
@click.pass_context
def sources_disable(ctx: click.Context, source_id: str) -> None:
    """Refuse the source's write keys (takes effect within the collector's cache time, 60 s)."""
    deployment = _deployment(ctx)
    changed = SourceRegistry(deployment.table(deployment.sources_table)).set_enabled(source_id, False)
    click.echo(f"disabled {changed} write key(s) of {source_id}")


@sources.command("enable")
@click.argument("source_id")
@click.pass_context
def sources_enable(ctx: click.Context, source_id: str) -> None:
    deployment = _deployment(ctx)
    changed = SourceRegistry(deployment.table(deployment.sources_table)).set_enabled(source_id, True)
    click.echo(f"enabled {changed} write key(s) of {source_id}")


# --- quarantine -----------------------------------------------------------------------


@click.group()
def quarantine() -> None:
    """Events that were refused, with the reason."""


@quarantine.command("list")
@click.option("--source", "source_id", help="Source id (default: every source with entries).")
@click.option("--limit", default=50, show_default=True)
@click.option("--raw/--no-raw", default=False, help="Include the event as it was sent.")
@click.pass_context
def quarantine_list(ctx: click.Context, source_id: str | None, limit: int, raw: bool) -> None:
    """Newest first, one JSON object per line."""
    deployment = _deployment(ctx)
    store = QuarantineStore(deployment.client("dynamodb"), deployment.quarantine_table)
    for source in [source_id] if source_id else store.sources():
        for item in store.entries(source, limit=limit):
            if not raw:
                item.pop("raw", None)
            item.pop("expires_at", None)
            click.echo(json.dumps(item, sort_keys=True))


# --- dead letters -----------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Batches the stream consumer gave up on (pointers into the stream)."""


@dlq.command("list")
@click.pass_context
def dlq_list(ctx: click.Context) -> None:
    deployment = _deployment(ctx)
    for batch in peek(deployment.client("sqs"), deployment.dlq()):
        click.echo(json.dumps({"shard": batch.shard_id, "from": batch.start_sequence,
                               "to": batch.end_sequence, "records": batch.batch_size,
                               "condition": batch.condition}))


@dlq.command("redrive")
@click.pass_context
def dlq_redrive(ctx: click.Context) -> None:
    """Write the dead-lettered records to the stream again (duplicates are skipped downstream)."""
    deployment = _deployment(ctx)
    count = redrive(deployment.client("sqs"), deployment.client("kinesis"), deployment.dlq(),
                    deployment.event_stream)
    click.echo(f"redrove {count} record(s)")


# --- import --------------------------------------------------------------------------------


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--write-key", envvar="CDP_WRITE_KEY", required=True, help="Source write key (env CDP_WRITE_KEY).")
@click.option("--api-url", envvar="CDP_API_URL", help="Collection API URL (default: the stack's or local).")
@click.option("--restart", is_flag=True, help="Ignore saved progress and start from the first row.")
@click.pass_context
def import_file(ctx: click.Context, file: Path, write_key: str, api_url: str | None, restart: bool) -> None:
    """Send a CSV or JSONL file of identify/track rows through the API, resumably.

    Progress is saved in FILE.import-state.json after every acknowledged batch; run the
    same command again to resume. Refused rows are listed in FILE.rejected.jsonl.
    """
    url = api_url or _deployment(ctx).api_url
    state_path = file.with_name(file.name + ".import-state.json")
    rejected_path = file.with_name(file.name + ".rejected.jsonl")
    total = sum(1 for _ in read_rows(file))
    client = ApiClient(url, write_key)
    try:
        with click.progressbar(length=total, label=f"importing {file.name}") as bar:
            report = run_import(file, client, state_path, rejected_path, restart=restart, on_rows=bar.update)
    except ImportFailed as exc:
        raise click.ClickException(f"import stopped: {exc} (run again to resume)") from exc
    summary: dict[str, Any] = {"rows": total, "resumed_after": report.skipped_rows, "sent": report.sent,
                               "accepted": report.accepted, "rejected": len(report.rejected)}
    click.echo(json.dumps(summary))
    if report.rejected:
        click.echo(f"rejected rows and reasons: {rejected_path}", err=True)
