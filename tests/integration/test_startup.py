"""Starting up: the server answers from the instant it listens, each model serves as soon as its
own load ends, and the server turns ready once every startup model has loaded.

A cold start's slow load is a Numba compile on a loader thread, seconds long but not something a
test can hold open. Every loader refuses what would block it for real (a FIFO is not a file), so
the one stand-in here holds the backend factory of one model, on its loader thread, where the
compile would run; the server, the other models, gRPC and the clients are all real.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from sluice.server.app import Server
from sluice.server.backends.base import Backend
from sluice.server.config.model import ModelConfig
from sluice.server.config.settings import ServerConfig
from tests.support.onnx_models import identity_model, write_model
from tests.support.running import RunningServer, start_server

#: The model whose load the test holds ("held" sorts before "quick": loading one model at a
#: time would load nothing after it).
HELD = "held"
#: A pipeline whose only step is HELD: it waits for it.
CHAIN = """
name: "chain"
platform: "ensemble"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }]
ensemble_scheduling { step [{ model_name: "held" model_version: -1
  input_map { key: "IN_x" value: "x" } output_map { key: "OUT_x" value: "y" } }] }
"""


class HeldServer(Server):
    """A real server whose backend factory, for HELD, waits until ``gate`` is set."""

    def __init__(self, config: ServerConfig, gate: threading.Event,
                 entered: threading.Event) -> None:
        super().__init__(config)
        self._gate, self._entered = gate, entered

    def _make_backend(self, config: ModelConfig, version_dir: Path) -> Backend:
        if config.name == HELD:
            self._entered.set()
            assert self._gate.wait(120), "the test never released the held load"
        return super()._make_backend(config, version_dir)


def x_input(value: float = 1.0, name: str = "IN_x") -> tc.InferInput:
    tensor = tc.InferInput(name, [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return tensor


def health(address: str) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return [stub.Check(health_pb2.HealthCheckRequest(service=service)).status
                for service in ("", "inference.GRPCInferenceService")]


def eventually(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


@pytest.fixture
def held_start(tmp_path: Path):
    """(running server listening while HELD's load is held, the gate that releases it)."""
    for name in (HELD, "quick"):
        write_model(tmp_path, name, identity_model({"x": ("FP32", ["batch", 4])}),
                    "max_batch_size: 8\n")
    (tmp_path / "chain" / "1").mkdir(parents=True)
    (tmp_path / "chain" / "config.pbtxt").write_text(CHAIN)
    gate, entered = threading.Event(), threading.Event()
    config = ServerConfig(model_repository=tmp_path, grpc_port=0, metrics_port=None,
                          state_dir=tmp_path / ".state")
    running: RunningServer | None = None
    try:
        running = start_server(config, 60, loaded=False,
                               build=lambda c: HeldServer(c, gate, entered))
        assert entered.wait(60), "the held model's load never started"
        yield running, gate
    finally:
        gate.set()
        if running is not None:
            running.wait_started()
            running.stop()


def test_the_server_answers_while_a_model_loads_and_is_ready_once_all_have(held_start):
    running, gate = held_start
    with tc.InferenceServerClient(running.address) as client:
        # The other model loads beside the held one and serves at once.
        eventually(lambda: client.is_model_ready("quick"))
        out = client.infer("quick", [x_input(3.0)]).as_numpy("OUT_x")
        np.testing.assert_array_equal(out, np.full((1, 4), 3.0, np.float32))

        assert client.is_server_live()
        assert not client.is_server_ready()
        assert health(running.address) == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
        for name, tensor in ((HELD, "IN_x"), ("chain", "x")):  # loading; waiting for its step
            assert not client.is_model_ready(name)
            with pytest.raises(InferenceServerException) as info:
                client.infer(name, [x_input(name=tensor)])
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert info.value.message() == f"model '{name}' is still loading"
            with pytest.raises(InferenceServerException) as info:
                client.get_model_metadata(name)
            assert info.value.message() == f"model '{name}' is still loading"
        states = {row["name"]: row.get("state") for row in
                  client.get_model_repository_index(as_json=True)["models"]}
        assert states == {HELD: "LOADING", "chain": "LOADING", "quick": "READY"}

        gate.set()
        running.wait_started()
        assert client.is_server_ready()
        assert health(running.address) == [health_pb2.HealthCheckResponse.SERVING] * 2
        out = client.infer(HELD, [x_input(5.0)]).as_numpy("OUT_x")
        np.testing.assert_array_equal(out, np.full((1, 4), 5.0, np.float32))
        out = client.infer("chain", [x_input(7.0, "x")]).as_numpy("y")
        np.testing.assert_array_equal(out, np.full((1, 4), 7.0, np.float32))

