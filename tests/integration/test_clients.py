"""clients.Client and clients.AsyncClient against real servers.

Inference results are checked against onnxruntime run directly on the same .onnx files. Retry
behaviour is checked against a real (tiny, in-test) gRPC peer that sheds on purpose, not a mock:
what it counts is what went over the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from clients import (
    AsyncClient,
    Client,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    RetryBudget,
    RetryPolicy,
    SluiceClientError,
)
from clients.errors import error_from_stream_message
from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2] / "model_repository"
BATCH_SIZES = (1, 7, 64)
PUSHBACK_MS = 50
# Timer and scheduling slack when checking "waited at least the pushback".
SLACK_S = 0.002

# model -> input name -> non-batch shape
MODEL_INPUTS: dict[str, dict[str, tuple[int, ...]]] = {
    "identity": {"INPUT0": (16,)},
    "add_sub": {"INPUT0": (16,), "INPUT1": (16,)},
    "digits": {"input": (64,)},
}


def random_inputs(model: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        name: rng.standard_normal((batch, *shape)).astype(np.float32)
        for name, shape in MODEL_INPUTS[model].items()
    }


@pytest.fixture(scope="module")
def reference() -> Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """onnxruntime run directly on the bundled .onnx file: model, inputs -> outputs by name."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model not in sessions:
            sessions[model] = ort.InferenceSession(
                str(REPO / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
            )
        session = sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))

    return run


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray], batch: int) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        actual = got[name]
        assert actual.shape[0] == batch, name
        assert actual.dtype == expected.dtype, name
        # digits' label is [batch] in ONNX and [batch, 1] on the wire (config reshape).
        np.testing.assert_allclose(actual.reshape(expected.shape), expected, atol=1e-5, rtol=0)


@pytest.fixture
def client(bundled_server) -> Iterator[Client]:
    with Client(bundled_server.address, timeout=30.0) as c:
        yield c


@pytest.fixture
async def aclient(bundled_server) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(bundled_server.address, timeout=30.0) as c:
        yield c


# -- inference matches onnxruntime -------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(MODEL_INPUTS))
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_sync_infer_matches_onnxruntime(client, reference, model, batch):
    rng = np.random.default_rng(batch)
    inputs = random_inputs(model, batch, rng)
    assert_matches(client.infer(model, inputs), reference(model, inputs), batch)


@pytest.mark.parametrize("model", sorted(MODEL_INPUTS))
@pytest.mark.parametrize("batch", BATCH_SIZES)
async def test_async_infer_matches_onnxruntime(aclient, reference, model, batch):
    rng = np.random.default_rng(100 + batch)
    inputs = random_inputs(model, batch, rng)
    assert_matches(await aclient.infer(model, inputs), reference(model, inputs), batch)


async def test_concurrent_async_infers_share_one_channel(aclient, reference):
    rng = np.random.default_rng(7)
    batches = [random_inputs("add_sub", 1 + i % 5, rng) for i in range(50)]
    results = await asyncio.gather(*(aclient.infer("add_sub", b) for b in batches))
    for inputs, got in zip(batches, results, strict=True):
        assert_matches(got, reference("add_sub", inputs), len(inputs["INPUT0"]))


def test_sync_requested_outputs_subset(client, reference):
    inputs = random_inputs("add_sub", 3, np.random.default_rng(1))
    got = client.infer("add_sub", inputs, outputs=["OUTPUT1"])
    assert set(got) == {"OUTPUT1"}
    np.testing.assert_allclose(got["OUTPUT1"], inputs["INPUT0"] - inputs["INPUT1"], atol=1e-5)


async def test_async_requested_outputs_subset(aclient, reference):
    inputs = random_inputs("digits", 5, np.random.default_rng(2))
    got = await aclient.infer("digits", inputs, outputs=["label"])
    assert set(got) == {"label"}
    want = reference("digits", inputs)["label"]
    np.testing.assert_array_equal(got["label"].reshape(want.shape), want)


def test_sync_request_id_round_trips(client):
    inputs = random_inputs("identity", 2, np.random.default_rng(3))
    request = client.build_request("identity", inputs, request_id="req-42")
    for _ in range(3):  # one encoded request, sent many times
        response = client.infer_request(request)
        assert response.id == "req-42"
        assert response.model_name == "identity"


async def test_async_request_id_round_trips(aclient):
    inputs = random_inputs("identity", 2, np.random.default_rng(4))
    request = aclient.build_request("identity", inputs, request_id="abc", parameters={"x": 1})
    response = await aclient.infer_request(request)
    assert response.id == "abc"


# -- error classes -----------------------------------------------------------------------------


def bad_requests() -> list[tuple[str, str, dict[str, np.ndarray], str]]:
    """(case id, model, inputs, input name the error must mention)."""
    ok = np.zeros((2, 16), np.float32)
    return [
        ("wrong-dtype", "identity", {"INPUT0": ok.astype(np.float64)}, "INPUT0"),
        ("wrong-shape", "identity", {"INPUT0": np.zeros((2, 15), np.float32)}, "INPUT0"),
        ("missing-input", "add_sub", {"INPUT0": ok}, "INPUT1"),
    ]


BAD = bad_requests()


@pytest.mark.parametrize(("model", "inputs", "name"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_sync_invalid_input_names_the_input(client, model, inputs, name):
    with pytest.raises(InvalidInput) as info:
        client.infer(model, inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert name in info.value.details
    assert info.value.attempts == 1


@pytest.mark.parametrize(("model", "inputs", "name"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_async_invalid_input_names_the_input(aclient, model, inputs, name):
    with pytest.raises(InvalidInput) as info:
        await aclient.infer(model, inputs)
    assert name in info.value.details


def test_sync_unknown_model_and_version(client):
    inputs = {"INPUT0": np.zeros((1, 16), np.float32)}
    with pytest.raises(ModelNotFound) as info:
        client.infer("no_such_model", inputs)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in info.value.details
    with pytest.raises(ModelNotFound):
        client.infer("identity", inputs, version="99")
    with pytest.raises(ModelNotFound):
        client.model_metadata("no_such_model")


async def test_async_unknown_model_and_version(aclient):
    inputs = {"INPUT0": np.zeros((1, 16), np.float32)}
    with pytest.raises(ModelNotFound):
        await aclient.infer("no_such_model", inputs)
    with pytest.raises(ModelNotFound):
        await aclient.infer("identity", inputs, version="99")


def test_unencodable_input_fails_before_sending(client):
    with pytest.raises(InvalidInput) as info:
        client.infer("identity", {"INPUT0": np.zeros((1, 16), np.complex64)})
    assert "INPUT0" in info.value.details


def test_stream_error_messages_map_to_classes():
    assert isinstance(error_from_stream_message("[NOT_FOUND] model 'x'"), ModelNotFound)
    error = error_from_stream_message("[UNAVAILABLE] queue full")
    assert isinstance(error, Overloaded) and error.details == "queue full"
    unknown = error_from_stream_message("something odd")
    assert type(unknown).__name__ == "ServerError"
    assert unknown.code == grpc.StatusCode.UNKNOWN


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


# HdrHistogram reports the highest value of the bucket holding a quantile; with 2 significant
# digits a bucket is at most 1/128 as wide as the values in it (the server rounds down first).
HDR_ROUNDING = 1 + 1 / 128


def check_latency(table: dict, model: str, requests_before: int, client_s: list[float]) -> None:
    """The server counted exactly the ``client_s`` requests (timed by the client around each call)
    since ``requests_before``, and its e2e quantiles are consistent with those timings.

    Each request's server e2e lies inside the client's call, so the server's k-th smallest e2e
    is at most the client's k-th smallest time: each server quantile is bounded by the client's
    value at the same rank (HdrHistogram's rank), up to the histogram's rounding. The window
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


# -- streaming ---------------------------------------------------------------------------------


def stream_inputs(count: int) -> list[dict[str, np.ndarray]]:
    """Distinct identity requests: request i holds 1..4 rows, all values offset by 1000 * i."""
    requests = []
    for i in range(count):
        rows = 1 + i % 4
        values = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16) + 1000 * i
        requests.append({"INPUT0": values})
    return requests


async def collect(results: AsyncIterator) -> dict[int, object]:
    seen: dict[int, object] = {}
    async for result in results:
        assert result.index not in seen, f"index {result.index} answered twice"
        seen[result.index] = result
    return seen


async def test_stream_answers_every_request_once_with_its_own_rows(aclient):
    requests = stream_inputs(200)
    seen = await collect(aclient.stream("identity", requests))
    assert sorted(seen) == list(range(200))
    for index, result in seen.items():
        assert result.error is None, result.error
        np.testing.assert_array_equal(result.outputs["OUTPUT0"], requests[index]["INPUT0"])


async def test_stream_bad_request_fails_only_itself(aclient):
    requests = stream_inputs(200)
    requests[100] = {"INPUT0": requests[100]["INPUT0"].astype(np.float64)}
    seen = await collect(aclient.stream("identity", requests))
    assert sorted(seen) == list(range(200))
    bad = seen.pop(100)
    assert isinstance(bad.error, InvalidInput) and bad.outputs is None
    assert "INPUT0" in bad.error.details
    for index, result in seen.items():
        assert result.error is None, (index, result.error)
        np.testing.assert_array_equal(result.outputs["OUTPUT0"], requests[index]["INPUT0"])


async def test_stream_from_async_source_with_unencodable_request(aclient):
    requests = stream_inputs(10)
    requests[3] = {"INPUT0": np.zeros((1, 16), np.complex64)}  # no KServe datatype

    async def source() -> AsyncIterator[dict[str, np.ndarray]]:
        for item in requests:
            await asyncio.sleep(0)
            yield item

    seen = await collect(aclient.stream("identity", source(), outputs=["OUTPUT0"]))
    assert sorted(seen) == list(range(10))
    assert isinstance(seen[3].error, InvalidInput)
    assert all(seen[i].error is None for i in range(10) if i != 3)


async def test_stream_errors_per_request_for_unknown_model(aclient):
    seen = await collect(aclient.stream("no_such_model", stream_inputs(5)))
    assert sorted(seen) == list(range(5))
    assert all(isinstance(r.error, ModelNotFound) for r in seen.values())


async def test_stream_left_early_cancels_and_client_stays_usable(aclient):
    got = 0
    async with contextlib.aclosing(aclient.stream("identity", stream_inputs(100))) as results:
        async for _ in results:
            got += 1
            if got == 3:
                break
    assert got == 3
    out = await aclient.infer("identity", {"INPUT0": np.ones((1, 16), np.float32)})
    np.testing.assert_array_equal(out["OUTPUT0"], np.ones((1, 16), np.float32))


async def test_empty_stream_ends_at_once(aclient):
    assert await collect(aclient.stream("identity", [])) == {}


# -- retries against a real shedding peer ------------------------------------------------------


class SheddingPeer(pb_grpc.GRPCInferenceServiceServicer):
    """A real gRPC peer implementing only ModelInfer: the first ``failures`` calls (None: all)
    fail with ``code`` and the trailers a shedding Sluice sends; later calls echo the inputs.
    """

    def __init__(
        self,
        failures: int | None,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        pushback: str | None = str(PUSHBACK_MS),
    ) -> None:
        self.failures = failures
        self.code = code
        self.pushback = pushback
        self.arrivals: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.arrivals)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    async def ModelInfer(self, request, context):
        self.arrivals.append(time.monotonic())
        if self.failures is None or self.calls <= self.failures:
            trailers = [("sluice-shed-reason", "queue_full")]
            if self.pushback is not None:
                trailers.append(("grpc-retry-pushback-ms", self.pushback))
            context.set_trailing_metadata(tuple(trailers))
            await context.abort(self.code, "shed by the test peer")
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(raw)
        return response


@pytest.fixture
async def start_peer() -> AsyncIterator[Callable[[SheddingPeer], Awaitable[str]]]:
    """Serve a SheddingPeer on this test's loop; returns its address."""
    servers: list[grpc.aio.Server] = []

    async def start(peer: SheddingPeer) -> str:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(peer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)


ECHO = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}


async def test_async_retries_until_success_honouring_pushback(start_peer):
    peer = SheddingPeer(failures=2)
    address = await start_peer(peer)
    async with AsyncClient(address, retries=3, backoff_base_s=0.001) as c:
        out = await c.infer("m", ECHO, timeout=5.0)
    np.testing.assert_array_equal(out["x"], ECHO["x"])
    assert peer.calls == 3
    # Each retry waited at least the pushback, by the peer's own stamps. How much longer is
    # jitter (bounded in test_backoff_is_full_jitter_...) plus scheduling, not pinned here.
    assert all(gap >= PUSHBACK_MS / 1000 - SLACK_S for gap in peer.gaps()), peer.gaps()


async def test_sync_retries_until_success_honouring_pushback(start_peer):
    peer = SheddingPeer(failures=3)
    address = await start_peer(peer)
    with Client(address, retries=3, backoff_base_s=0.001) as c:
        # The peer runs on this loop: block a worker thread, not the loop.
        out = await asyncio.to_thread(c.infer, "m", ECHO, timeout=5.0)
    np.testing.assert_array_equal(out["x"], ECHO["x"])
    assert peer.calls == 4
    assert all(gap >= PUSHBACK_MS / 1000 - SLACK_S for gap in peer.gaps()), peer.gaps()


async def test_retries_spent_raise_overloaded_with_last_pushback(start_peer):
    peer = SheddingPeer(failures=None)
    address = await start_peer(peer)
    async with AsyncClient(address, retries=2, backoff_base_s=0.001) as c:
        with pytest.raises(Overloaded) as info:
            await c.infer("m", ECHO)
    assert peer.calls == 3
    error = info.value
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.retry_after_ms == PUSHBACK_MS
    assert error.reason == "queue_full"
    assert error.attempts == 3


async def test_retry_budget_caps_extra_load(start_peer):
    peer = SheddingPeer(failures=None)
    address = await start_peer(peer)
    budget = RetryBudget(ratio=0.1, max_tokens=10)
    calls = 100
    async with AsyncClient(address, retries=3, backoff_base_s=0.001, retry_budget=budget) as c:
        for _ in range(calls):
            with pytest.raises(Overloaded) as info:
                await c.infer("m", ECHO)
            assert info.value.retry_after_ms == PUSHBACK_MS
    # Retries happened while tokens lasted, but never beyond 10% of calls + the initial tokens.
    assert calls + 10 <= peer.calls <= 1.1 * calls + budget.max_tokens


async def test_invalid_argument_is_never_retried(start_peer):
    peer = SheddingPeer(failures=None, code=grpc.StatusCode.INVALID_ARGUMENT)
    address = await start_peer(peer)
    async with AsyncClient(address, retries=5) as c:
        with pytest.raises(InvalidInput):
            await c.infer("m", ECHO)
    with Client(address, retries=5) as sync, pytest.raises(InvalidInput):
        await asyncio.to_thread(sync.infer, "m", ECHO)
    assert peer.calls == 2


class NoJitter(random.Random):
    """uniform(a, b) is always a: no backoff beyond the pushback, which is waited exactly."""

    def random(self) -> float:
        return 0.0


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_timeout_covers_every_retry(start_peer, sync):
    peer = SheddingPeer(failures=None)
    address = await start_peer(peer)
    timeout = 0.3
    pushback = PUSHBACK_MS / 1000
    # Without jitter the attempts go out one pushback apart, so the last one that fits is sent
    # about a pushback before the deadline, never just before it (where it could run out of
    # time on the wire: DeadlineExceeded, by design). Jitter has its own test below.
    policy = RetryPolicy(retries=50, backoff_base_s=0.001, rng=NoJitter())
    # The peer stamps arrivals with time.monotonic in this process: the clock read here, just
    # before the client takes its own deadline, so ``deadline`` is never later than the client's.
    started = 0.0

    def infer_sync(c: Client) -> None:
        nonlocal started
        started = time.monotonic()
        c.infer("m", ECHO, timeout=timeout)

    with pytest.raises(Overloaded) as info:
        if sync:
            with Client(address) as c:
                c.policy = policy
                await asyncio.to_thread(infer_sync, c)
        else:
            async with AsyncClient(address) as c:
                c.policy = policy
                started = time.monotonic()
                await c.infer("m", ECHO, timeout=timeout)
    deadline = started + timeout
    # Every attempt reached the peer before the deadline, each after a wait of at least the
    # pushback; so no more than 1 + timeout / pushback of them fit.
    assert peer.arrivals and all(started < arrival < deadline for arrival in peer.arrivals), (
        [arrival - started for arrival in peer.arrivals]
    )
    assert all(gap >= pushback - SLACK_S for gap in peer.gaps()), peer.gaps()
    assert 2 <= peer.calls <= 1 + timeout / pushback
    # The deadline ran out while waiting to retry: the caller gets the last shed, not a timeout.
    assert info.value.retry_after_ms == PUSHBACK_MS
    assert info.value.reason == "queue_full"
    assert info.value.attempts == peer.calls


async def test_negative_pushback_means_do_not_retry(start_peer):
    peer = SheddingPeer(failures=None, pushback="-1")
    address = await start_peer(peer)
    async with AsyncClient(address, retries=3) as c:
        with pytest.raises(Overloaded) as info:
            await c.infer("m", ECHO)
    assert info.value.retry_after_ms == -1
    assert peer.calls == 1


async def test_unreachable_server_raises_overloaded():
    # Nothing listens on port 1: UNAVAILABLE, retried and then surfaced as Overloaded.
    async with AsyncClient("127.0.0.1:1", retries=1, backoff_base_s=0.001) as c:
        with pytest.raises(Overloaded) as info:
            await c.infer("m", ECHO, timeout=5.0)
    assert info.value.retry_after_ms is None
    assert info.value.attempts == 2


def test_backoff_is_full_jitter_within_bounds_and_honours_pushback():
    policy = RetryPolicy(retries=8, backoff_base_s=0.05, backoff_max_s=2.0, rng=random.Random(0))
    for retry in range(8):
        cap = min(2.0, 0.05 * 2**retry)
        delays = [policy.delay(retry, None) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > 0.5 * cap  # jitter spans the range, not a fixed step
        pushed = [policy.delay(retry, 300) for _ in range(200)]
        assert all(0.3 <= d <= max(cap, 0.3 * 1.2) for d in pushed)


def test_error_base_class_carries_code_and_details():
    error = SluiceClientError(grpc.StatusCode.INTERNAL, "boom")
    assert error.code == grpc.StatusCode.INTERNAL and error.details == "boom"
    assert "INTERNAL" in str(error)
