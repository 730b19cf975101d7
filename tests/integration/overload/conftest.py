"""Fixtures of the overload tests: ``hold``, a gate over the batches of chosen ORT backends
(tests/support/overload.py's ``Hold``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluice.server.backends.ort import OrtBackend
from tests.support.overload import Hold


@pytest.fixture
def hold(make_server, monkeypatch) -> Iterator[Hold]:
    """A :class:`Hold` over every ``OrtBackend`` the test's servers make. Depends on
    ``make_server`` so that the gate opens before the servers stop."""
    held = Hold()
    run = OrtBackend.run

    def gated(backend: OrtBackend, instance: int, inputs):
        if backend in held.held:
            held.started += 1
            assert held.gate.wait(60), "the test never opened the gate"
        return run(backend, instance, inputs)

    monkeypatch.setattr(OrtBackend, "run", gated)
    yield held
    held.open()
