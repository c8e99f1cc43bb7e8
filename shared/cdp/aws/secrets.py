"""Destination secrets, read at run time by name (never from code, configuration values
or environment variables), through Powertools' parameters utility (cached 5 minutes, so
a rotated secret is picked up within that, and a warm function makes no call per batch).

A name beginning with ``/`` (or an SSM parameter ARN) is an SSM Parameter Store
SecureString, decrypted on read; any other name (or a Secrets Manager ARN) is a Secrets
Manager secret (its string value).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities import parameters

CACHE_SECONDS = 300


def is_ssm_parameter(name: str) -> bool:
    return name.startswith("/") or ":ssm:" in name


class SecretReader:
    """``reader(name) -> str``; the providers may be given (tests), else Powertools' own
    clients are created on first use (they honour ``AWS_ENDPOINT_URL`` like every boto3 client)."""

    def __init__(self, ssm: Any = None, secrets_manager: Any = None, max_age: int = CACHE_SECONDS) -> None:
        self._ssm = parameters.SSMProvider(boto3_client=ssm) if ssm is not None else None
        self._secrets = parameters.SecretsProvider(boto3_client=secrets_manager) \
            if secrets_manager is not None else None
        self._max_age = max_age

    def __call__(self, name: str) -> str:
        if is_ssm_parameter(name):
            if self._ssm is None:
                self._ssm = parameters.SSMProvider()
            value = self._ssm.get(name, max_age=self._max_age, decrypt=True)
        else:
            if self._secrets is None:
                self._secrets = parameters.SecretsProvider()
            value = self._secrets.get(name, max_age=self._max_age)
        if isinstance(value, bytes):
            return value.decode("utf-8")
        return str(value)
