"""boto3 clients, created once per process with timeouts and retries that suit Lambda.

Created lazily (not at import) so tests can start moto first; boto3 honours
``AWS_ENDPOINT_URL``, which is how the local stack points everything at moto.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(
    # The service validates every request anyway; botocore's client-side copy of that
    # check was ~18% of the stream consumer's CPU (docs/benchmarks.md).
    parameter_validation=False,
    connect_timeout=2,
    read_timeout=5,
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,
)


@cache
def client(service: str) -> Any:
    return boto3.session.Session().client(service, config=_CONFIG)  # type: ignore[call-overload]


@cache
def table(name: str) -> Any:
    return boto3.session.Session().resource("dynamodb", config=_CONFIG).Table(name)


def reset() -> None:
    """Forget cached clients (tests that start a new moto between cases)."""
    client.cache_clear()
    table.cache_clear()
