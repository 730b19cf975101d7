"""The inline short path over the wire: requests as tritonclient and perf_analyzer send them
(outputs named, perf_analyzer's ``triton_enable_empty_final_response`` parameter) run on the
event loop's thread when the model is idle, without admission's estimates, and answer exactly
what onnxruntime computes; a request with a ``timeout`` parameter goes through admission.

The limit for inline runs is pinned high for this test (InlinePolicy.fixed_limit_s): whether
``digits`` is cheaper than a thread hand-off is measured, and on a loaded machine the
measurement decides against it; here the rule under test is what reaches the short path, not
the measurement.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto.tensors import decode_outputs, make_input
from tests.support.bundled_inputs import newest_onnx

ROWS = np.random.default_rng(11).random((6, 64), dtype=np.float32) * 16


@pytest.fixture
def ran_on(make_server, repo_copy, monkeypatch):
    running = make_server(repo_copy)
    served = running.server.repository.get("digits")
    served._batcher._pool.inline_policy.fixed_limit_s = 10.0
    backend = served.backend
    threads: list[str] = []
    run = backend.run

    def recording(instance, inputs):
        threads.append(threading.current_thread().name)
        return run(instance, inputs)

    monkeypatch.setattr(backend, "run", recording)
    served._batcher._pool._run = recording
    admit = served.admission.admit

    def counting(*args):  # the short path skips admit's estimates altogether
        threads.append("admit")
        return admit(*args)

    monkeypatch.setattr(served.admission, "admit", counting)
    client = triton.InferenceServerClient(running.address)
    yield client, threads, running.thread.name, repo_copy, running.address
    client.close()


def ask(client, row: np.ndarray, *, outputs: bool, parameters: dict | None = None,
        timeout: int | None = None):
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(row[None, :])
    names = ("label", "probabilities") if outputs else ()
    wanted = [triton.InferRequestedOutput(name) for name in names] or None
    result = client.infer("digits", [tensor], outputs=wanted, parameters=parameters,
                          timeout=timeout)
    return result.as_numpy("label"), result.as_numpy("probabilities")


def test_requests_as_clients_send_them_run_inline_and_answer_like_onnxruntime(ran_on):
    client, threads, loop_thread, _, address = ran_on
    reference = ort.InferenceSession(str(newest_onnx("digits")))  # the version that answers
    ask(client, ROWS[0], outputs=False)  # the first run on a thread measures the model
    cases = [
        {"outputs": False},
        {"outputs": True},
        {"outputs": True, "parameters": {"client_tag": "a"}},
    ]
    for row, case in zip(ROWS[1:], cases, strict=False):
        threads.clear()
        label, probabilities = ask(client, row, **case)
        expected_label, expected_probabilities = reference.run(None, {"input": row[None, :]})
        np.testing.assert_array_equal(label, expected_label.reshape(1, 1))
        np.testing.assert_allclose(probabilities, expected_probabilities, rtol=1e-6)
        assert threads == [loop_thread], case
    # perf_analyzer's own parameter (tritonclient reserves the name, so sent as protobuf)
    message = pb.ModelInferRequest(model_name="digits")
    tensor, raw = make_input("input", ROWS[5][None, :])
    message.inputs.append(tensor)
    message.raw_input_contents.append(raw)
    message.outputs.add(name="probabilities")
    message.parameters["triton_enable_empty_final_response"].bool_param = True
    threads.clear()
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
    (probabilities,) = decode_outputs(reply).values()
    np.testing.assert_allclose(
        probabilities, reference.run(["probabilities"], {"input": ROWS[5][None, :]})[0], rtol=1e-6
    )
    assert threads == [loop_thread]
    threads.clear()  # a queue timeout of its own: admit decides (and the run may still be inline)
    ask(client, ROWS[0], outputs=False, timeout=5_000_000)  # sent as parameter 'timeout' (us)
    assert threads[0] == "admit"
