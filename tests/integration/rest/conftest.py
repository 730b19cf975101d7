"""Fixtures of the REST tests: one server per module with REST beside gRPC (every datatype's
identity, a mixed one and a slow one with a queue of one), its REST address, and a
``tritonclient.http`` and a ``tritonclient.grpc`` client of it."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from sluice.server.config.settings import ServerConfig
from tests.support.onnx_models import identity_model, write_model
from tests.support.overload import slow_repo
from tests.support.rest import MAX_BODY, VALUES
from tests.support.running import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("rest-repo")
    write_model(repo, "alltypes", identity_model(
        {name: (name, ["batch", 3]) for name in VALUES}))
    write_model(repo, "mixed", identity_model(
        {name: (name, ["batch", 3]) for name in ("FP16", "BOOL", "BYTES", "FP32")}))
    slow_repo(repo, "slow", ms=150, batching="default_queue_policy { max_queue_size: 1 }")
    running = start_server(ServerConfig(
        model_repository=repo, grpc_port=0, http_port=0, metrics_port=None,
        max_message_bytes=MAX_BODY, state_dir=tmp_path_factory.mktemp("rest-state")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def url(server) -> str:
    return f"127.0.0.1:{server.server.rest.port}"


@pytest.fixture(scope="module")
def clients(server, url):
    with grpcclient.InferenceServerClient(server.address) as g:
        h = httpclient.InferenceServerClient(url)
        yield h, g
        h.close()

