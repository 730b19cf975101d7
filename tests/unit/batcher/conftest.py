"""Fixtures of the batcher tests: a fresh fake backend that records its batches and can be held at
a gate (tests/support/batcher_fakes.py)."""

from __future__ import annotations

import pytest

from tests.support.batcher_fakes import FakeBackend


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()
