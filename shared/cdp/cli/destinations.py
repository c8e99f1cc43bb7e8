"""``cdp destinations``: what each destination did (delivery log, queues, dead letters),
and the redrive of its dead letters."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from cdp.aws.delivery_log import DeliveryLog
from cdp.aws.destination_admin import (
    depths,
    destination_queues,
    destination_status,
    peek_dead_letters,
    redrive,
)
from cdp.aws.sync_store import sync_status
from cdp.cli.deployment import Deployment


def _deployment(ctx: click.Context) -> Deployment:
    return ctx.find_root().obj["deployment"]()  # type: ignore[no-any-return]


@click.group()
def destinations() -> None:
    """Activation destinations: status, dead letters, redrive."""


@destinations.command("list")
@click.pass_context
def destinations_list(ctx: click.Context) -> None:
    """Every destination, with its queue's and dead-letter queue's depths."""
    deployment = _deployment(ctx)
    sqs = deployment.client("sqs")
    for destination_id, queues in destination_queues(sqs, deployment.destination_queue_prefix).items():
        click.echo(json.dumps({"destination": destination_id, "fifo": queues.queue_url.endswith(".fifo"),
                               "queue": depths(sqs, queues.queue_url),
                               "dead_letters": depths(sqs, queues.dead_letter_url).get("waiting", 0)}))


@destinations.command("status")
@click.argument("destination_id", required=False)
@click.option("--hours", default=24, show_default=True, type=click.IntRange(1, 24 * 90),
              help="Hours of the delivery log to add up.")
@click.pass_context
def destinations_status(ctx: click.Context, destination_id: str | None, hours: int) -> None:
    """Attempts, successes, retries, dead letters, the last error, latency p50/p99 (the
    delivery log), and the queues' depths; one destination or all."""
    deployment = _deployment(ctx)
    sqs = deployment.client("sqs")
    found = destination_queues(sqs, deployment.destination_queue_prefix)
    if destination_id is not None and destination_id not in found:
        raise click.ClickException(f"no destination {destination_id!r} (known: {', '.join(found) or 'none'})")
    log = DeliveryLog(deployment.client("dynamodb"), deployment.delivery_log_table)
    now = datetime.now(UTC)
    for current, queues in found.items():
        if destination_id is not None and current != destination_id:
            continue
        click.echo(json.dumps(destination_status(sqs, log, queues, hours, now)))


@destinations.command("dead-letters")
@click.argument("destination_id")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.pass_context
def destinations_dead_letters(ctx: click.Context, destination_id: str, limit: int) -> None:
    """The destination's dead letters with their reasons (left on the queue). Prints the
    change or event references, not the profile."""
    deployment = _deployment(ctx)
    sqs = deployment.client("sqs")
    queues = destination_queues(sqs, deployment.destination_queue_prefix).get(destination_id)
    if queues is None or queues.dead_letter_url is None:
        raise click.ClickException(f"no destination {destination_id!r}")
    for letter in peek_dead_letters(sqs, queues.dead_letter_url, limit):
        body = letter.body
        click.echo(json.dumps({"reason": letter.reason, "attempts": letter.attempts, "sent_at": letter.sent_at,
                               "kind": body.get("kind"), "message_id": body.get("message_id"),
                               "audience_id": body.get("audience_id"), "transition": body.get("transition"),
                               "profile_id": body.get("profile_id")}))


@destinations.command("redrive")
@click.argument("destination_id")
@click.option("--max", "max_messages", type=click.IntRange(1), default=None, help="Move at most this many.")
@click.pass_context
def destinations_redrive(ctx: click.Context, destination_id: str, max_messages: int | None) -> None:
    """Move the destination's dead letters back to its queue (once the cause is fixed):
    they are delivered again with a new retry window and their original idempotency key."""
    deployment = _deployment(ctx)
    sqs = deployment.client("sqs")
    queues = destination_queues(sqs, deployment.destination_queue_prefix).get(destination_id)
    if queues is None:
        raise click.ClickException(f"no destination {destination_id!r}")
    moved = redrive(sqs, queues, max_messages)
    click.echo(f"redrove {moved} message(s) to {destination_id}")


@destinations.command("syncs")
@click.argument("destination_id")
@click.argument("audience_ids", nargs=-1, required=True)
@click.pass_context
def destinations_syncs(ctx: click.Context, destination_id: str, audience_ids: tuple[str, ...]) -> None:
    """The batch syncs of a destination's audiences: the running one's progress, or the
    last one's results (adds, removes, failures and their first reasons)."""
    deployment = _deployment(ctx)
    ddb = deployment.client("dynamodb")
    for audience_id in audience_ids:
        click.echo(json.dumps(sync_status(ddb, deployment.segments_table, destination_id, audience_id)))
