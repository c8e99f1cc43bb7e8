"""Logger, tracer and metrics, set up once and imported everywhere.

Field vocabulary (logs and metrics) is documented in docs/observability.md. Never log
write keys, access tokens or event payloads: they carry personal data.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "cdp"
NAMESPACE = "CDP"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
