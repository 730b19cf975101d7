"""Clients over several replicas (sluice.clients.replicas): real Sluice servers on loopback
ports behind one client. What each replica's own ModelStatistics counts is the reference: calls
go round-robin over all of them, a replica whose health says NOT_SERVING gets none, a replica
stopped or draining costs no call (the retry moves to another), and a draining replica's
1 s pushback is not waited out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from sluice.clients import AsyncClient, Client, RetryBudget
from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.config.settings import ServerConfig
from tests.support.running import RunningServer, start_server

MODEL = "identity"
X = np.arange(16, dtype=np.float32).reshape(1, 16)


def _config(state_dir: Path) -> ServerConfig:
    return ServerConfig(model_repository=BUNDLED_REPOSITORY, grpc_port=0, metrics_port=None,
                        model_control="explicit", startup_models=(MODEL,), state_dir=state_dir)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    """Three replicas kept for the module; tests that stop or drain one start their own."""
    running = [start_server(_config(tmp_path_factory.mktemp(f"replica{i}"))) for i in range(3)]
    yield running
    for server in running:
        server.stop()


@pytest.fixture
def own_replica(tmp_path: Path) -> Iterator[RunningServer]:
    """A replica this test may stop, drain or mark unhealthy."""
    server = start_server(_config(tmp_path / "state"))
    yield server
    if server.thread.is_alive():
        server.stop()


def answered(server: RunningServer) -> int:
    """Inference requests this replica answered with success (its own statistics)."""
    with Client(server.address, timeout=10.0) as client:
        stats = client.statistics(MODEL)
    return sum(m.inference_stats.success.count for m in stats.model_stats)


def counts(servers: list[RunningServer]) -> list[int]:
    return [answered(s) for s in servers]


def warm_up(client: Client, servers: list[RunningServer], limit: int = 200) -> list[int]:
    """Call until every replica has answered once (each connection is up and picked), so
    that what follows is exact round-robin; returns the counts then."""
    for _ in range(limit):
        client.infer(MODEL, {"INPUT0": X})
        seen = counts(servers)
        if all(seen):
            return seen
    raise AssertionError(f"some replica got no call in {limit}: {seen}")


def test_a_list_of_replicas_gets_the_calls_in_turn(replicas) -> None:
    with Client([s.address for s in replicas], timeout=10.0) as client:
        before = warm_up(client, replicas)
        for _ in range(30):
            out = client.infer(MODEL, {"INPUT0": X})
            np.testing.assert_array_equal(out["OUTPUT0"], X)
    after = counts(replicas)
    assert [a - b for a, b in zip(after, before, strict=True)] == [10, 10, 10]


async def test_the_async_client_spreads_an_ipv4_target_over_every_replica(replicas) -> None:
    target = "ipv4:" + ",".join(s.address for s in replicas)
    with Client(target, timeout=10.0) as sync:  # same target: brings every replica into use
        warm_up(sync, replicas)
    before = await asyncio.to_thread(counts, replicas)
    async with AsyncClient(target, timeout=10.0) as client:
        while not all(await asyncio.to_thread(lambda: [a - b for a, b in zip(
                counts(replicas), before, strict=True)])):
            await client.infer(MODEL, {"INPUT0": X})  # the async channel's own connections
        before = await asyncio.to_thread(counts, replicas)
        outs = await asyncio.gather(*(client.infer(MODEL, {"INPUT0": X + i}) for i in range(30)))
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["OUTPUT0"], X + i)
    after = await asyncio.to_thread(counts, replicas)
    assert [a - b for a, b in zip(after, before, strict=True)] == [10, 10, 10]


def test_a_replica_not_serving_gets_no_calls_until_it_serves_again(replicas, own_replica):
    own_replica.call(own_replica.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    fleet = [*replicas[:2], own_replica]
    with Client([s.address for s in fleet], timeout=10.0) as client:
        before = counts(fleet)
        for _ in range(30):
            client.infer(MODEL, {"INPUT0": X})
        after = counts(fleet)
        assert after[2] == before[2] == 0
        assert sum(after) - sum(before) == 30
        own_replica.call(own_replica.server.health.set("", health_pb2.HealthCheckResponse.SERVING))
        for _ in range(200):  # the health watch streams the change; it is back in turn
            client.infer(MODEL, {"INPUT0": X})
            if answered(own_replica):
                break
        assert answered(own_replica) > 0


def test_calls_go_on_succeeding_when_a_replica_stops(replicas, own_replica) -> None:
    fleet = [*replicas[:2], own_replica]
    # Without the health watch: the stop is seen only through refused calls and lost
    # connections, which the retries move to the replicas left.
    with Client([s.address for s in fleet], timeout=10.0, health_check=False) as client:
        warm_up(client, fleet)
        own_replica.stop()
        before = counts(fleet[:2])
        for i in range(30):
            out = client.infer(MODEL, {"INPUT0": X + i})
            np.testing.assert_array_equal(out["OUTPUT0"], X + i)
        after = counts(fleet[:2])
    assert sum(after) - sum(before) == 30


def test_a_draining_replica_is_retried_on_another_at_once(replicas, own_replica) -> None:
    """The draining replica asks for 1000 ms of pushback; a call with a 500 ms deadline could
    not wait that long (its retry would be given up), so every call answered proves the retry
    went to another replica at once."""
    fleet = [*replicas[:2], own_replica]
    budget = RetryBudget(ratio=0.0, max_tokens=100.0)  # spent tokens = retries made
    with Client([s.address for s in fleet], timeout=10.0, health_check=False,
                retry_budget=budget) as client:
        warm_up(client, fleet)
        assert own_replica.call(own_replica.server.servicer.drain(5.0))  # refuses from now on
        before = counts(fleet[:2])
        refused_before = answered(own_replica)
        for i in range(30):
            out = client.infer(MODEL, {"INPUT0": X + i}, timeout=0.5)
            np.testing.assert_array_equal(out["OUTPUT0"], X + i)
        after = counts(fleet[:2])
    assert sum(after) - sum(before) == 30
    assert answered(own_replica) == refused_before  # it answered none of them
    # Round-robin over A, B and the draining C: a call that picks C is retried on A, and the
    # next call picks B; so every other call from the first C on is retried: 14 or 15 of the
    # 30, with the phase the warm-up left (a retry sent back to C would be one more each).
    assert 100.0 - budget.tokens in (14.0, 15.0)
