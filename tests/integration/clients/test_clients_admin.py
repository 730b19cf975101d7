"""The clients' control calls against real servers: health, metadata and model config, the
statistics and latency quantiles (consistent with the client's own timings), and loading and
unloading models through the repository API.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from sluice.clients import AsyncClient, Client, ModelNotFound
from tests.support.bundled_inputs import REPO, random_inputs

# -- metadata, health, statistics --------------------------------------------------------------


def test_sync_health_and_metadata(client):
    assert client.server_live() and client.server_ready()
    assert client.model_ready("identity")
    assert not client.model_ready("no_such_model")
    assert client.server_metadata()["name"] == "sluice"
    meta = client.model_metadata("digits")
    assert meta["name"] == "digits" and "1" in meta["versions"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert client.model_config("digits").max_batch_size == 256
    stats = client.statistics("identity")
    assert [s.name for s in stats.model_stats] == ["identity"]


async def test_async_health_and_metadata(aclient):
    assert await aclient.server_live() and await aclient.server_ready()
    assert await aclient.model_ready("add_sub", "1")
    meta = await aclient.model_metadata("add_sub")
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert (await aclient.model_config("cnn")).max_batch_size == 128
    assert "statistics" in (await aclient.server_metadata())["extensions"]


# The server reports the highest value of the bucket holding a quantile; with 8 significant
# bits a bucket is at most 1/128 as wide as the values in it (the server rounds down first).
HDR_ROUNDING = 1 + 1 / 128


def check_latency(table: dict, model: str, requests_before: int, client_s: list[float]) -> None:
    """The server counted exactly the ``client_s`` requests (timed by the client around each call)
    since ``requests_before``, and its e2e quantiles are consistent with those timings.

    Each request's server e2e lies inside the client's call, so the server's k-th smallest e2e
    is at most the client's k-th smallest time: each server quantile is bounded by the client's
    value at the same rank, up to the bucket's rounding. The window
    must hold only these requests (a fresh server). No lower bound from the client side holds:
    the server's e2e leaves out the wire and the client's own encoding (about 0.3 ms of ~1.3 ms).
    """
    stages = table[model]["1"]
    assert stages["requests"] - requests_before == len(client_s)
    e2e = stages["e2e"]
    ordered = sorted(client_s)
    assert 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"], e2e
    for percent in (50, 95, 99):
        rank = max(1, int(percent * len(ordered) / 100 + 0.5))
        bound = ordered[rank - 1] * HDR_ROUNDING
        assert e2e[f"p{percent}"] <= bound, (percent, e2e, ordered)


async def test_latency_quantiles_after_requests(make_server):
    running = make_server(REPO, model_control="explicit", startup_models=("add_sub",))
    inputs = random_inputs("add_sub", 4, np.random.default_rng(5))
    async with AsyncClient(running.address, timeout=30.0) as aclient:
        before = (await aclient.latency("add_sub"))["add_sub"]["1"]
        assert before["requests"] == 0 and before["e2e"] is None

        async def timed() -> float:
            started = time.monotonic()
            await aclient.infer("add_sub", inputs)
            return time.monotonic() - started

        client_s = list(await asyncio.gather(*(timed() for _ in range(20))))
        check_latency(await aclient.latency("add_sub"), "add_sub", before["requests"], client_s)
        assert set(await aclient.latency()) == {"add_sub"}  # "" asks for every loaded model
    with Client(running.address, timeout=30.0) as client:
        check_latency(client.latency("add_sub"), "add_sub", before["requests"], client_s)


async def test_repository_load_and_unload(make_server, repo_copy):
    running = make_server(repo_copy, model_control="explicit", startup_models=("identity",))
    async with AsyncClient(running.address, timeout=60.0) as c:
        index = {row["name"]: row for row in await c.repository_index()}
        assert index["identity"] == {
            "name": "identity", "version": "1", "state": "READY", "reason": ""
        }
        never_loaded = {"name": "add_sub", "version": "", "state": "UNAVAILABLE"}
        assert index["add_sub"] == {**never_loaded, "reason": "not loaded"}
        assert not await c.model_ready("add_sub")

        await c.load_model("add_sub")
        assert await c.model_ready("add_sub")
        ready = await c.repository_index(ready_only=True)
        assert {"identity", "add_sub"} <= {row["name"] for row in ready}
        inputs = random_inputs("add_sub", 2, np.random.default_rng(6))
        assert set(await c.infer("add_sub", inputs)) == {"OUTPUT0", "OUTPUT1"}

        await c.unload_model("add_sub")
        assert not await c.model_ready("add_sub")
        index = {row["name"]: row for row in await c.repository_index()}
        assert index["add_sub"] == {**never_loaded, "reason": "unloaded"}
        assert "add_sub" not in {row["name"] for row in await c.repository_index(ready_only=True)}
        with pytest.raises(ModelNotFound):
            await c.load_model("no_such_model")

    with Client(running.address, timeout=60.0) as sync:
        sync.unload_model("identity")
        assert not sync.model_ready("identity")
        index = {row["name"]: row for row in sync.repository_index()}
        assert index["identity"] == {
            "name": "identity", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"
        }
        sync.load_model("identity")
        assert sync.model_ready("identity")
