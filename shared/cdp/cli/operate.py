"""Operator commands: sources and write keys, quarantine, dead letters, file import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cdp.aws.account_traits import AccountTraits
from cdp.aws.evaluator_redrive import REDRIVE_CHECK, FailedStreamBatch, RedriveOutcome, failed_stream_batch
from cdp.aws.evaluator_redrive import redrive as redrive_stream_batches
from cdp.aws.membership_store import MembershipStore
from cdp.aws.profile_items import ProfileItems
from cdp.aws.quarantine_store import QuarantineStore
from cdp.cli.deployment import Deployment
from cdp.importer import ApiClient, ImportFailed, read_rows, run_import
from cdp.redrive import peek, peek_messages, redrive
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
    """Batches a stream's consumer gave up on (pointers into the stream): the stream
    consumer's (default) or, with --evaluator, the segment evaluator's."""


EVALUATOR_OPTION = click.option("--evaluator", is_flag=True,
                                help="The segment evaluator's dead letters (identity table's stream).")


@dlq.command("list")
@EVALUATOR_OPTION
@click.pass_context
def dlq_list(ctx: click.Context, evaluator: bool) -> None:
    deployment = _deployment(ctx)
    if evaluator:
        for failed in peek_evaluator(deployment.client("sqs"), deployment.evaluator_dlq()):
            click.echo(json.dumps({"shard": failed.shard_id, "from": failed.start_sequence,
                                   "to": failed.end_sequence, "records": failed.batch_size,
                                   "condition": failed.condition}))
        return
    for batch in peek(deployment.client("sqs"), deployment.dlq()):
        click.echo(json.dumps({"shard": batch.shard_id, "from": batch.start_sequence,
                               "to": batch.end_sequence, "records": batch.batch_size,
                               "condition": batch.condition}))


@dlq.command("redrive")
@EVALUATOR_OPTION
@click.pass_context
def dlq_redrive(ctx: click.Context, evaluator: bool) -> None:
    """Write the dead-lettered records to the stream again (duplicates are skipped downstream);
    with --evaluator, evaluate the failed batches' profiles again against every audience."""
    deployment = _deployment(ctx)
    if evaluator:
        outcome = redrive_evaluator(deployment)
        click.echo(json.dumps({"batches": outcome.batches, "profiles_touched": outcome.profiles_touched,
                               "profiles_gone": outcome.profiles_gone, "accounts": outcome.accounts,
                               "expired": outcome.expired}))
        if outcome.expired:
            click.echo(f"{len(outcome.expired)} batch(es) are no longer in the stream (24 h): left on the "
                       "queue; update the audiences they concern to re-evaluate every profile", err=True)
        return
    count = redrive(deployment.client("sqs"), deployment.client("kinesis"), deployment.dlq(),
                    deployment.event_stream)
    click.echo(f"redrove {count} record(s)")


def peek_evaluator(sqs: Any, queue_url: str) -> list[FailedStreamBatch]:
    """The evaluator's dead-letter messages, left on the queue."""
    return peek_messages(sqs, queue_url, failed_stream_batch)


def redrive_evaluator(deployment: Deployment) -> RedriveOutcome:
    ddb = deployment.client("dynamodb")
    profiles = ProfileItems(ddb, deployment.identity_table)
    accounts = AccountTraits(ddb, deployment.events_table, deployment.identity_table)
    memberships = MembershipStore(ddb, deployment.memberships_table)  # conditional writes: out of band
    check = {REDRIVE_CHECK: True}

    def touch(profile_id: str) -> bool:
        if profiles.touch(profile_id, check):
            return True
        # Not live: merged away (or deleted). Its exits may be what the failed batch was
        # to record: record them (no events, as for any merged-away profile).
        memberships.leave_all(profile_id)
        return False

    return redrive_stream_batches(
        deployment.client("sqs"), dynamodb_streams(deployment), deployment.evaluator_dlq(), touch=touch,
        touch_account=lambda gid: sum(profiles.touch(pid, {"accounts": gid})
                                      for pid in profiles.live_items(accounts.member_ids(gid))))


def dynamodb_streams(deployment: Deployment) -> Any:
    """A DynamoDB Streams client; locally moto answers only on the regional streams endpoint."""
    if deployment.is_local:
        from cdp.local.dynamodb_esm import dynamodb_streams_client

        return dynamodb_streams_client()
    return deployment.client("dynamodbstreams")


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
