"""Fixtures of the client tests: a sync and an async client of the session's bundled server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from sluice.clients import AsyncClient, Client


@pytest.fixture
def client(bundled_server) -> Iterator[Client]:
    with Client(bundled_server.address, timeout=30.0) as c:
        yield c


@pytest.fixture
async def aclient(bundled_server) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(bundled_server.address, timeout=30.0) as c:
        yield c
