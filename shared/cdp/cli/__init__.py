"""The ``cdp`` command line: run the local stack, import files, operate a deployment."""

from __future__ import annotations

import click

from cdp.cli.deployment import LOCAL_API_URL, LOCAL_AWS_URL, Deployment, local_deployment, stack_deployment


@click.group()
@click.version_option(package_name="cdp")
@click.option("--stack", envvar="CDP_STACK", help="Operate this deployed CloudFormation stack "
              "(env CDP_STACK). Without it, commands talk to the local stack.")
@click.option("--aws-url", envvar="CDP_LOCAL_AWS_URL", default=LOCAL_AWS_URL, show_default=True,
              help="The local stack's AWS endpoint (ignored with --stack).")
@click.option("--api-url", envvar="CDP_LOCAL_API_URL", default=LOCAL_API_URL, show_default=True,
              help="The local stack's API (ignored with --stack).")
@click.pass_context
def main(ctx: click.Context, stack: str | None, aws_url: str, api_url: str) -> None:
    """Serverless customer data platform: local stack and operator commands."""

    def resolve() -> Deployment:
        return stack_deployment(stack) if stack else local_deployment(aws_url, api_url)

    ctx.obj = {"deployment": resolve}


def _register() -> None:
    from cdp.cli import destinations, operate, profiles, segments
    from cdp.cli import local as local_cmd

    main.add_command(local_cmd.local)
    for command in (operate.sources, operate.quarantine, operate.dlq, operate.import_file,
                    profiles.profile, profiles.tokens, segments.audiences, segments.traits,
                    segments.backfills, destinations.destinations):
        main.add_command(command)


_register()
