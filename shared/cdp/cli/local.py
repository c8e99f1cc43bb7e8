"""``cdp local``: run the whole CDP on this machine, against moto, until Ctrl-C."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import click
from pydantic import ValidationError

from cdp import resources
from cdp.activation.destinations import DestinationConfig, parse_destinations, problems
from cdp.cli.deployment import LOCAL_API_URL
from cdp.local import DEFAULT_ACCESS_TOKEN, DEFAULT_SPACE, DEFAULT_WRITE_KEY, LOCAL_SOURCE_ID, EmbeddedStack
from cdp.local.demo_inbox import DEMO_BUCKET, DemoInbox, demo_destinations


def banner(stack: EmbeddedStack) -> str:
    """What to print once the stack is up: where things are and how to use them."""
    api, aws = stack.api_url, stack.aws_endpoint_url
    events_table = resources.EVENTS_TABLE.local_name
    bucket = resources.ARCHIVE_BUCKET.local_name
    dlq = resources.STREAM_CONSUMER_DLQ.local_name
    key = stack.write_key
    # The `cdp` command's defaults are the default local stack's; name what differs.
    cli = "cdp" if api == LOCAL_API_URL else f"cdp --api-url {api}"
    get_options = "".join(f" --{name} {value}" for name, value, default in (
        ("space", stack.space, DEFAULT_SPACE), ("access-token", stack.access_token, DEFAULT_ACCESS_TOKEN))
        if value != default)
    return f"""
CDP local stack is running.

  HTTP API (Segment-compatible)  {api}
  AWS endpoint (moto)            {aws}
  Write key                      {key}   (source {LOCAL_SOURCE_ID})
  Profile API access token       {stack.access_token}   (space {stack.space})
  Kinesis shards                 {stack.shards}

Send an event:
  curl -u {key}: -H 'Content-Type: application/json' \\
       -d '{{"userId":"u1","event":"Signed Up"}}' {api}/v1/track

From Python (segment-analytics-python):
  import segment.analytics as analytics
  analytics.write_key = "{key}"
  analytics.host = "{api}"
  analytics.track("u1", "Signed Up")
  analytics.flush()

Read the profile back (Profile API, Segment compatible):
  curl -u {stack.access_token}: {api}/v1/spaces/{stack.space}/collections/users/profiles/user_id:u1/traits
  {cli} profile get user_id:u1{get_options}

Look at the result:
  aws --endpoint-url {aws} dynamodb scan --table-name {events_table}
  aws s3 ls --recursive s3://{bucket} --endpoint-url {aws}
  aws sqs receive-message --queue-url {aws}/123456789012/{dlq} --endpoint-url {aws}
  (any AWS credentials work, e.g. AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing)

Activation ({len(stack.activation.destinations) if stack.activation else 0} destination(s)):
  {cli} destinations status
  {cli} destinations dead-letters <destination id>

Press Ctrl-C to stop; all data lives in memory and is gone after that.
"""


@click.command("local")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for the HTTP API and moto.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port of the HTTP API.")
@click.option("--aws-port", default=4566, show_default=True, type=int, help="Port of the moto AWS endpoint.")
@click.option("--write-key", default=DEFAULT_WRITE_KEY, show_default=True,
              help="Write key of the local source (src_local).")
@click.option("--access-token", default=DEFAULT_ACCESS_TOKEN, show_default=True,
              help="Profile API access token of the local stack (registered as a hash, like `cdp tokens`).")
@click.option("--space", default=DEFAULT_SPACE, show_default=True,
              help="The Profile API space (/v1/spaces/<space>/...) the local stack answers.")
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Send the demo story (events/demo) once the stack is up.")
@click.option("--shards", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Shards of the Kinesis event stream (one poller each).")
@click.option("--functions-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding <function>/handler.py (default: the checkout's functions/).")
@click.option("--destinations", "destinations_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Activation destinations (a JSON list, as the deployment's `destinations`); "
              "default with --demo: examples/destinations/demo.json, delivering to a demo inbox.")
@click.option("--secret", "secrets", multiple=True, metavar="NAME=VALUE",
              help="A destination secret to store in the local Secrets Manager (or SSM for names "
              "starting with /); repeatable.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the handlers' INFO logs and metrics (EMF) and what the local stack does.")
def local(host: str, port: int, aws_port: int, write_key: str, access_token: str, space: str, demo: bool,
          shards: int, functions_dir: Path | None, destinations_file: Path | None, secrets: tuple[str, ...],
          verbose: bool) -> None:
    """Run the CDP locally: moto for AWS, the real Lambda handlers, an HTTP API and a stream poller."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # moto's server logs every request it serves; that is noise here.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for a clean shutdown
            raise KeyboardInterrupt
        click.echo(f"\n{signal.Signals(signum).name} received, stopping...", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    quiet_env = {} if verbose else _quiet_handlers_env()
    inbox: DemoInbox | None = None
    try:
        destinations, destination_secrets = _destinations(destinations_file, secrets)
        if destinations_file is None and demo:
            inbox = DemoInbox(host, echo=lambda line: click.echo(line, err=True)).start()
            destinations, demo_secrets = demo_destinations(inbox.url)
            destination_secrets = {**demo_secrets, **destination_secrets}
        stack = EmbeddedStack(host=host, port=port, aws_port=aws_port, write_key=write_key,
                              access_token=access_token, space=space, shards=shards,
                              functions_dir=functions_dir, extra_env=quiet_env, destinations=destinations,
                              destination_secrets=destination_secrets)
    except (ValueError, OSError) as exc:
        if inbox is not None:
            inbox.stop()
        raise click.BadParameter(str(exc)) from exc
    click.echo(f"Starting moto on {host}:{aws_port} and the HTTP API on {host}:{port} ...", err=True)
    try:
        try:
            stack.start()
        except (OSError, FileNotFoundError, ImportError) as exc:
            raise click.ClickException(str(exc)) from exc
        if inbox is not None:
            stack.session().client("s3").create_bucket(Bucket=DEMO_BUCKET)
        click.echo(banner(stack))
        if demo and not stop.is_set():
            _send_demo(stack, stop)
        stop.wait()
    finally:
        stack.stop()
        if inbox is not None:
            inbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("Stopped.", err=True)


def _destinations(path: Path | None, secrets: tuple[str, ...]) -> tuple[list[DestinationConfig], dict[str, str]]:
    """The --destinations file and the --secret values (names checked like the configuration's)."""
    stored: dict[str, str] = {}
    for entry in secrets:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise ValueError(f"--secret takes NAME=VALUE, not {entry.split('=')[0]!r}...")
        stored[name] = value
    if path is None:
        return [], stored
    try:
        return parse_destinations(json.loads(path.read_text(encoding="utf-8"))), stored
    except ValidationError as exc:
        raise ValueError("; ".join(f"{p['field']}: {p['reason']}" for p in problems(exc))) from exc


def _quiet_handlers_env() -> dict[str, str]:
    """Keep the console readable: handlers log warnings only and print no EMF metrics.

    Variables the user set win; nothing else about the handlers changes.
    """
    wanted = {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    return {name: value for name, value in wanted.items() if name not in os.environ}


def _send_demo(stack: EmbeddedStack, stop: threading.Event | None = None) -> None:
    from cdp.local.demo import live_from, load_definitions, send_demo

    loaded = load_definitions(stack.api_url, stack.access_token)
    for refused in loaded:
        if not refused.ok:
            click.echo(f"demo: {refused.collection}/{refused.ident} refused ({refused.status}): {refused.body}",
                       err=True)
    ready = live_from(loaded)
    if ready is not None:
        # Consumers keep a new definition's aggregates from its live_from on (docs/segmentation.md).
        wait = (ready - datetime.now(UTC)).total_seconds()
        if wait > 0 and (stop or threading.Event()).wait(wait):
            return
    results = send_demo(stack.api_url, stack.write_key)
    sent = sum(r.events for r in results if r.ok)
    for result in results:
        if not result.ok:
            click.echo(f"demo: {result.file} refused ({result.status}): {result.body}", err=True)
    drained = stack.wait_idle(timeout=30)
    audiences = sum(1 for r in loaded if r.ok and r.collection == "audiences")
    traits = sum(1 for r in loaded if r.ok and r.collection == "computed-traits")
    click.echo(f"Demo: {audiences} audiences and {traits} computed traits (examples/audiences), then "
               f"{sent} events in {len(results)} batches{'' if drained else ' (still processing)'}: "
               "a visitor who signs up, buys, uses the app and looks at office plans.\n"
               f"  Her unified profile: cdp --api-url {stack.api_url} profile get email:ada@example.com\n"
               f"  An audience filling:  cdp --api-url {stack.api_url} audiences members pricing-page-interest")
