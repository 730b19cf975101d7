"""Priorities under load: level 1 is never shed while level 2 has queued work (the row cap
sheds level 2, last-served first), and tritonclient's priority orders the queue.

Through a real server (tests/support/overload.py): models are real ONNX files whose compute time
is set by a loop count, or whose batches the test holds at a gate (``hold``); assertions are
about statuses and counts, never about timings.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics import labels, moved, scrape
from tests.support.onnx_models import identity_model, write_model
from tests.support.overload import (
    WIDTH,
    occupy,
    request,
    served,
    shed_status,
    slow_repo,
    wait_queued,
)
from tests.support.threads import block_until


def test_level_1_is_never_shed_while_level_2_has_queued_work(make_server, hold, tmp_path):
    """The row cap makes room for level 1 by shedding queued level 2, last-served first, and
    every shed says why in its status, trailers and metric labels. The backend is held, so
    nothing completes (and no speed is measured) until the test lets it."""
    write_model(tmp_path, "m", identity_model({"x": ("FP32", ["batch", WIDTH])}),
                "max_batch_size: 1\n"
                "dynamic_batching { priority_levels: 2 default_priority_level: 2 }\n"
                'parameters { key: "max_queue_rows" value { string_value: "4" } }')
    running = make_server(tmp_path, metrics_port=0)
    version = served(running, "m")
    before = scrape(running)
    hold.close(version.backend)
    queue_full = (grpc.StatusCode.UNAVAILABLE, "queue_full",
                  "model 'm:1': queue full (max_queue_rows)")
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def refused(priority: int) -> tuple[grpc.StatusCode, str | None, str]:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("m", priority=priority), timeout=30)
            return shed_status(info.value)

        blocker, *low = occupy(stub, running, hold, "m", 4, priority=2)
        assert refused(2) == queue_full  # the rows are full and nothing is below level 2
        high = []
        for i in reversed(range(4)):  # each level-1 arrival sheds the last-served level 2
            high.append(stub.ModelInfer.future(request("m", priority=1), timeout=30))
            assert block_until(lambda: sum(f.done() for f in low) == len(high))
            assert [f.done() for f in low] == [j >= i for j in range(4)]
            assert shed_status(low[i].exception()) == (
                grpc.StatusCode.UNAVAILABLE, "priority",
                "model 'm:1': shed to make room for priority 1")
        assert version.queue_stats()["queued_requests"] == 4
        # only with no level 2 left to shed is level 1 refused (and level 2 still is)
        assert refused(1) == queue_full
        assert refused(2) == queue_full
        hold.open()
        replies = [f.result() for f in (blocker, *high)]
    assert [r.model_name for r in replies] == ["m"] * 5
    after = scrape(running)
    model = {"model": "m", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**model, reason="priority", priority="2"): 4,
        labels(**model, reason="queue_full", priority="2"): 2,
        labels(**model, reason="queue_full", priority="1"): 1,
    }
    assert moved(before, after, "sluice_requests_total") == {
        labels(**model, outcome="success"): 5, labels(**model, outcome="failure"): 7}
    assert version.stats.execution_count == 5  # the shed requests were never computed


def test_tritonclient_priority_orders_the_queue(make_server, tmp_path):
    import tritonclient.grpc as tc

    slow_repo(tmp_path, ms=200, batching="priority_levels: 2 default_priority_level: 2")
    running = make_server(tmp_path)
    finished: list[int] = []
    lock = threading.Lock()

    def call(priority: int) -> None:
        with tc.InferenceServerClient(running.address) as client:
            tensor = tc.InferInput("IN_x", [1, WIDTH], "FP32")
            tensor.set_data_from_numpy(np.ones((1, WIDTH), np.float32))
            client.infer("slow", [tensor], priority=priority)
            with lock:
                finished.append(priority)

    blocker = threading.Thread(target=call, args=(2,))
    blocker.start()
    while served(running, "slow").queue_stats()["busy_instances"] < 1:
        time.sleep(0.002)
    low = [threading.Thread(target=call, args=(2,)) for _ in range(3)]
    for t in low:
        t.start()
    wait_queued(running, "slow", 3)
    high = threading.Thread(target=call, args=(1,))
    high.start()
    wait_queued(running, "slow", 4)
    for t in (blocker, *low, high):
        t.join(30)
    # the priority-1 request arrived last and overtook the three queued priority-2 ones
    assert finished == [2, 1, 2, 2, 2]
