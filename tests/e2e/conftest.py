"""One embedded local stack for the whole e2e suite, on free ports, without the demo.

The stack points boto3 at its moto through the process environment, so the e2e
tests run after every other test (see ``pytest_collection_modifyitems``) and the
environment is restored when the stack stops.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_pipeline import Pipeline

from cdp.local import EmbeddedStack

WRITE_KEY = "e2e-write-key"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Run the e2e tests last: while the stack runs, boto3 in this process talks to it."""
    items.sort(key=lambda item: "e2e" in item.keywords)


@pytest.fixture(scope="session")
def pipeline() -> Iterator[Pipeline]:
    stack = EmbeddedStack(port=0, aws_port=0, write_key=WRITE_KEY, retry_backoff_s=0.05,
                          poll_interval_s=0.05)
    stack.start()
    try:
        yield Pipeline(stack)
    finally:
        stack.stop()
