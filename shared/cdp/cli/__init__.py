"""The ``cdp`` command line: run the local stack, import files, operate a deployment."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="cdp")
def main() -> None:
    """Serverless customer data platform: local stack and operator commands."""


def _register() -> None:
    # Each command group lives in its own module; import errors surface at start.
    from cdp.cli import local as local_cmd

    main.add_command(local_cmd.local)


_register()
