"""Fixtures of the local stack's unit tests (fakes live in local_stack_fakes.py)."""

from __future__ import annotations

import pytest
from local_stack_fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
