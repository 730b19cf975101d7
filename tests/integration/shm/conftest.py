"""Fixtures of the system shared memory tests: one server per module over Triton's ``simple``
model and a BYTES identity, a tritonclient client that leaves no region registered, and
``regions``, which makes regions with unique keys and destroys them after the test.

Keys carry this process's id and a random part: /dev/shm is shared by everyone on the host.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm

from sluice.server.config.settings import ServerConfig
from tests.support.onnx_models import identity_model, write_model
from tests.support.running import RunningServer, start_server
from tests.support.triton_models import SIMPLE_CONFIG, simple_model


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shm-models")
    write_model(root, "simple", simple_model(), SIMPLE_CONFIG)
    write_model(root, "strings", identity_model({"s": ("BYTES", ["batch", 3])}),
                'name: "strings"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n')
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(ServerConfig(model_repository=repo, grpc_port=0, metrics_port=None,
                                        state_dir=tmp_path_factory.mktemp("shm-state")))
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> Iterator[tc.InferenceServerClient]:
    with tc.InferenceServerClient(server.address) as c:
        c.unregister_system_shared_memory()  # each test starts with none registered
        yield c
        c.unregister_system_shared_memory()


@pytest.fixture
def regions() -> Iterator:
    """Makes regions (tritonclient's helper) with unique keys; destroys them after the test."""
    made = []

    def make(name: str, byte_size: int):
        key = f"/sluice_test_{os.getpid()}_{uuid.uuid4().hex[:8]}_{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        made.append(handle)
        return handle, key

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)

