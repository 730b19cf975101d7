"""clients.Client and clients.AsyncClient infer against a real server: results match
onnxruntime run directly on the same .onnx files, requested outputs and request ids round-trip,
and a stream answers every request once with its own rows (a bad one fails only itself).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import onnxruntime as ort
import pytest

from sluice.clients import InvalidInput, ModelNotFound
from tests.support.bundled_inputs import MODEL_INPUTS, newest_onnx, random_inputs

BATCH_SIZES = (1, 7, 64)


@pytest.fixture(scope="module")
def reference() -> Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """onnxruntime run directly on the bundled .onnx file of the version that answers a request
    naming none (the highest): model, inputs -> outputs by name."""
    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model not in sessions:
            sessions[model] = ort.InferenceSession(
                str(newest_onnx(model)), providers=["CPUExecutionProvider"]
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
