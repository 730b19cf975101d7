"""Repeated ModelInfer layouts over the wire: tritonclient sends the same layout again and again
(other ids, other tensors); after the first, the server decodes them from their bytes
(``sluice_request_layout_lookups_total{result="hit"}``) and answers exactly what numpy
computes; a request of that layout that is wrong still gets the normal path's status.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from sluice.server.config.settings import ServerConfig
from tests.support.bundled_inputs import REPO
from tests.support.metrics import labels, moved, scrape
from tests.support.running import start_server

LOOKUPS = "sluice_request_layout_lookups_total"
HIT, MISS = labels(result="hit"), labels(result="miss")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO / "add_sub", root / "add_sub")
    running = start_server(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0,
                                        state_dir=root / ".state"))
    yield running
    running.stop()


def add_sub(client, a: np.ndarray, b: np.ndarray, request_id: str, outputs=("OUTPUT0",
            "OUTPUT1")):
    tensors = [triton.InferInput(name, list(x.shape), "FP32") for name, x in
               (("INPUT0", a), ("INPUT1", b))]
    for tensor, x in zip(tensors, (a, b), strict=True):
        tensor.set_data_from_numpy(x)
    wanted = [triton.InferRequestedOutput(name) for name in outputs]
    return client.infer("add_sub", tensors, outputs=wanted, request_id=request_id,
                        parameters={"client_tag": "layouts"})


def test_a_repeated_layout_is_served_from_the_cache_and_answers_like_numpy(server):
    rng = np.random.default_rng(5)
    client = triton.InferenceServerClient(server.address)
    before = scrape(server)
    for i in range(12):
        a = rng.standard_normal((2, 16), dtype=np.float32)
        b = rng.standard_normal((2, 16), dtype=np.float32)
        result = add_sub(client, a, b, f"req-{i}")
        assert result.get_response().id == f"req-{i}"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    after = scrape(server)
    # The first two requests of the layout are parsed by protobuf; the second teaches the cache.
    assert moved(before, after, LOOKUPS) == {MISS: 2.0, HIT: 10.0}
    # Another batch size is another layout: two misses, then hits.
    before = after
    for i in range(4):
        a = np.full((3, 16), i, np.float32)
        result = add_sub(client, a, a * 2, str(i), outputs=("OUTPUT1",))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), -a)
        assert result.as_numpy("OUTPUT0") is None
    assert moved(before, scrape(server), LOOKUPS) == {MISS: 2.0, HIT: 2.0}
    client.close()


def test_a_cached_layout_sent_wrong_gets_the_normal_paths_status(server):
    client = triton.InferenceServerClient(server.address)
    a = np.ones((1, 16), np.float32)
    for i in range(3):
        add_sub(client, a, a, f"ok-{i}")
    # Same names, datatypes and shapes declared, but a raw input of the wrong length.
    tensors = [triton.InferInput("INPUT0", [1, 16], "FP32"),
               triton.InferInput("INPUT1", [1, 16], "FP32")]
    tensors[0].set_data_from_numpy(a)
    tensors[1]._raw_content = a.tobytes()[:-4]  # what a broken client sends
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", tensors, request_id="bad",
                     outputs=[triton.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")],
                     parameters={"client_tag": "layouts"})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT1" in info.value.message()
    result = add_sub(client, a, a, "after")  # and the server keeps answering from the cache
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    client.close()
