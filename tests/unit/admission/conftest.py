"""Fixtures of the admission tests: a fresh fake clock, and a backend whose batches take 10 ms of
that clock per row (tests/support/admission_model.py)."""

from __future__ import annotations

import pytest

from tests.support.admission_model import TimedBackend
from tests.support.fake_clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> TimedBackend:
    return TimedBackend(clock)
