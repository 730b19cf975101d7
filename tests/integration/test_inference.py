"""ModelInfer / ModelStreamInfer correctness: outputs equal onnxruntime run directly, rows
never cross between concurrent requests, every datatype round-trips."""

from __future__ import annotations

import asyncio
import queue
from functools import partial

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca

from tests.support.bundled_inputs import newest_onnx
from tests.support.onnx_models import identity_model, write_model


def reference(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # No version is named: the highest one answers (digits serves versions 1 and 2).
    session = ort.InferenceSession(str(newest_onnx(model)), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def infer_inputs(feeds: dict[str, np.ndarray], module=tc) -> list:
    out = []
    for name, value in feeds.items():
        tensor = module.InferInput(name, list(value.shape), tc_datatype(value))
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def tc_datatype(value: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(value.dtype)


CASES = [
    ("identity", {"INPUT0": (16,)}, [1, 2, 17, 512]),
    ("add_sub", {"INPUT0": (16,), "INPUT1": (16,)}, [1, 5, 64]),
    ("digits", {"input": (64,)}, [1, 3, 100, 256]),
    ("cnn", {"image": (3, 32, 32)}, [1, 8, 128]),
]


@pytest.mark.parametrize(("model", "shapes", "batches"), CASES, ids=[c[0] for c in CASES])
def test_outputs_equal_onnxruntime(bundled_server, model, shapes, batches):
    rng = np.random.default_rng(42)
    with tc.InferenceServerClient(bundled_server.address) as client:
        for batch in batches:
            feeds = {
                name: rng.standard_normal((batch, *dims)).astype(np.float32)
                for name, dims in shapes.items()
            }
            result = client.infer(model, infer_inputs(feeds))
            expected = reference(model, feeds)
            for name, value in expected.items():
                got = result.as_numpy(name)
                if model == "digits" and name == "label":
                    value = value.reshape(-1, 1)  # config.pbtxt reshape: [batch] -> [batch, 1]
                assert got.shape == value.shape, (name, batch)
                np.testing.assert_allclose(got, value, atol=1e-5, rtol=1e-5)


def test_requested_output_subset(bundled_server):
    a = np.ones((2, 16), np.float32)
    b = np.full((2, 16), 3, np.float32)
    with tc.InferenceServerClient(bundled_server.address) as client:
        result = client.infer(
            "add_sub", infer_inputs({"INPUT0": a, "INPUT1": b}),
            outputs=[tc.InferRequestedOutput("OUTPUT1")], request_id="req-7",
        )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    assert response.id == "req-7"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


async def test_500_concurrent_mixed_batches_get_their_own_rows(bundled_server):
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 33, size=500)
    async with tca.InferenceServerClient(bundled_server.address) as client:

        async def one(i: int, rows: int):
            x = np.empty((rows, 16), np.float32)
            x[:, 0] = i  # tag: request id
            x[:, 1] = np.arange(rows)  # tag: row within the request
            x[:, 2:] = rng.standard_normal((rows, 14))
            result = await client.infer("identity", infer_inputs({"INPUT0": x}, tca))
            return x, result.as_numpy("OUTPUT0")

        results = await asyncio.gather(*(one(i, int(n)) for i, n in enumerate(sizes)))
    for sent, got in results:
        np.testing.assert_array_equal(got, sent)
    stats = bundled_server.server.repository.get("identity").stats
    assert max(stats.batch_stats) > 1  # they really were batched together


def test_every_datatype_round_trips(make_server, tmp_path):
    datatypes = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                 "INT64", "FP16", "FP32", "FP64", "BYTES"]
    model = identity_model({d: (d, ["batch", 3]) for d in datatypes})
    write_model(tmp_path, "dtypes", model, "max_batch_size: 8\ndynamic_batching {}\n")
    running = make_server(tmp_path)
    rng = np.random.default_rng(3)
    feeds = {}
    for d in datatypes:
        if d == "BYTES":
            # ONNX string tensors hold UTF-8 text (non-UTF-8 is refused: see test_errors).
            value = np.array([[b"", "café ✓".encode(), b"\x00a"]] * 2, dtype=object)
        elif d == "BOOL":
            value = rng.integers(0, 2, (2, 3)).astype(bool)
        else:
            from tritonclient.utils import triton_to_np_dtype

            dtype = np.dtype(triton_to_np_dtype(d))
            if dtype.kind == "f":
                value = rng.standard_normal((2, 3)).astype(dtype)
            else:
                info = np.iinfo(dtype)
                value = np.array([[info.min, 0, info.max]] * 2, dtype=dtype)
        feeds[f"IN_{d}"] = value
    with tc.InferenceServerClient(running.address) as client:
        result = client.infer("dtypes", infer_inputs(feeds))
    for d in datatypes:
        got = result.as_numpy(f"OUT_{d}")
        np.testing.assert_array_equal(got, feeds[f"IN_{d}"], err_msg=d)
        assert got.dtype == feeds[f"IN_{d}"].dtype or d == "BYTES"


def test_stream_answers_every_request_with_its_id_and_survives_errors(bundled_server):
    answers: queue.Queue = queue.Queue()
    with tc.InferenceServerClient(bundled_server.address) as client:
        client.start_stream(partial(lambda q, result, error: q.put((result, error)), answers))
        sent = {}
        for i in range(40):
            x = np.full((1, 16), i, np.float32)
            if i == 13:  # wrong datatype: this one request fails, the stream goes on
                bad = tc.InferInput("INPUT0", [1, 16], "FP64")
                bad.set_data_from_numpy(x.astype(np.float64))
                client.async_stream_infer("identity", [bad], request_id=str(i))
                continue
            sent[str(i)] = x
            client.async_stream_infer("identity", infer_inputs({"INPUT0": x}), request_id=str(i))
        got, errors = {}, []
        for _ in range(40):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                got[result.get_response().id] = result.as_numpy("OUTPUT0")
        client.stop_stream()
    assert len(errors) == 1 and "INPUT0" in errors[0] and "FP32" in errors[0]
    assert set(got) == set(sent)
    for key, value in sent.items():
        np.testing.assert_array_equal(got[key], value)
