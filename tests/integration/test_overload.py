"""Overload through a real server: shed codes and trailers, deadlines, which priority is shed
first, bounded queues, size caps and degraded mode. Models are real ONNX files whose compute
time is set by a loop count, or whose batches the test holds at a gate (``hold``); assertions
are about statuses and counts, never about timings. How much of priority 1 survives a 3x
overload is a measurement, not a policy: ``loadtests/overload.py`` reports it (its "p1 success"
target)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc
from proto import model_config_pb2 as mc
from proto.tensors import make_input
from server.backends.ort import OrtBackend
from server.config.model import OVERLOAD_PARAMETERS
from server.errors import DeadlineExceeded
from server.types import InferRequest
from tests.integration.test_lifecycle import start_cli_server
from tests.support.metrics import labels, moved, scrape
from tests.support.onnx_models import identity_model, slow_model, write_model
from tests.support.threads import block_until

WIDTH = 16
#: Loop rounds per millisecond of compute, roughly (ORT on one thread, width 16).
ROUNDS_PER_MS = 800
PUSHBACK = "grpc-retry-pushback-ms"
REASON = "sluice-shed-reason"


def slow_repo(root: Path, name: str = "slow", *, ms: float, batching: str = "",
              params: dict[str, str] | None = None, max_batch: int = 1) -> Path:
    """A model computing for about ``ms`` per batch, one instance on one ORT thread."""
    parameters = {"intra_op_thread_count": "1", **(params or {})}
    config = (
        f"max_batch_size: {max_batch}\ndynamic_batching {{ {batching} }}\n"
        "instance_group [{ count: 1 kind: KIND_CPU }]\n"
        + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
                  for k, v in parameters.items())
    )
    write_model(root, name, slow_model(WIDTH, int(ms * ROUNDS_PER_MS)), config)
    return root


def request(model: str, rows: int = 1, *, priority: int = 0,
            timeout: int | None = None) -> pb.ModelInferRequest:
    """One request, with ``priority`` and ``timeout`` (us) encoded as tritonclient does."""
    tensor, raw = make_input("IN_x", np.ones((rows, WIDTH), np.float32))
    message = pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw])
    if priority:
        message.parameters["priority"].uint64_param = priority
    if timeout is not None:
        message.parameters["timeout"].int64_param = timeout
    return message


@dataclass
class Outcome:
    code: grpc.StatusCode
    reason: str | None = None
    pushback_ms: int | None = None
    answered_by: str | None = None
    priority: int = 0
    sent: float = 0.0


def outcome_of_error(exc: grpc.RpcError, **kw) -> Outcome:
    trailers = dict(exc.trailing_metadata() or ())
    pushback = trailers.get(PUSHBACK)
    return Outcome(exc.code(), trailers.get(REASON),
                   int(pushback) if pushback is not None else None, **kw)


def outcome_of_reply(reply: pb.ModelInferResponse, **kw) -> Outcome:
    by = reply.parameters.get("sluice_answered_by")
    return Outcome(grpc.StatusCode.OK, answered_by=by.string_param if by else None, **kw)


def fire(address: str, messages: list[pb.ModelInferRequest], timeout: float | None = None):
    """Send every message at once (futures on one channel); outcomes in order."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(m, timeout=timeout) for m in messages]
        out = []
        for future in futures:
            try:
                out.append(outcome_of_reply(future.result()))
            except grpc.RpcError as exc:
                out.append(outcome_of_error(exc))
        return out


def served(running, name: str):
    return running.server.repository.get(name)


def wait_queued(running, name: str, requests: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while served(running, name).queue_stats()["queued_requests"] < requests:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.005)


def shed_status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str | None, str]:
    """(code, shed reason trailer, details) of a refused call; a shed also carries a
    pushback of at least 1 ms."""
    outcome = outcome_of_error(exc)
    if outcome.code == grpc.StatusCode.UNAVAILABLE:
        assert outcome.pushback_ms is not None and outcome.pushback_ms >= 1, outcome
    return outcome.code, outcome.reason, exc.details()




class Hold:
    """Holds the batches of chosen ORT backends at a gate, on their instance threads, until
    :meth:`open` (model warm-up runs before any backend is chosen, so it is never held)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.held: list[OrtBackend] = []
        #: Batches the chosen backends have started, held or not.
        self.started = 0

    def close(self, *backends: OrtBackend) -> None:
        self.gate.clear()
        self.held.extend(backends)

    def open(self) -> None:
        self.gate.set()

    def wait_started(self, batches: int) -> None:
        assert block_until(lambda: self.started >= batches), f"{batches} batch(es) not started"


@pytest.fixture
def hold(make_server, monkeypatch) -> Iterator[Hold]:
    """A :class:`Hold` over every ``OrtBackend`` the test's servers make. Depends on
    ``make_server`` so that the gate opens before the servers stop."""
    held = Hold()
    run = OrtBackend.run

    def gated(backend: OrtBackend, instance: int, inputs):
        if backend in held.held:
            held.started += 1
            assert held.gate.wait(60), "the test never opened the gate"
        return run(backend, instance, inputs)

    monkeypatch.setattr(OrtBackend, "run", gated)
    yield held
    held.open()


def occupy(stub, running, hold: Hold, model: str, queued: int, **kw) -> list[grpc.Future]:
    """One request computing (held at the gate) and ``queued`` more waiting behind it."""
    admitted = [stub.ModelInfer.future(request(model, **kw), timeout=30)]
    hold.wait_started(1)
    admitted += [stub.ModelInfer.future(request(model, **kw), timeout=30)
                 for _ in range(queued)]
    wait_queued(running, model, queued)
    return admitted


# -- shed statuses and trailers -----------------------------------------------------------------


def test_queue_full_is_unavailable_with_pushback_and_reason(make_server, hold, tmp_path):
    slow_repo(tmp_path, ms=1, batching="default_queue_policy { max_queue_size: 2 }")
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    hold.close(served(running, "slow").backend)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admitted = occupy(stub, running, hold, "slow", 2)  # the queue of 2 is full
        for _ in range(7):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("slow"), timeout=30)
            assert shed_status(info.value) == (
                grpc.StatusCode.UNAVAILABLE, "queue_full",
                "model 'slow:1': queue full (2 requests at priority 1)")
        hold.open()
        for future in admitted:
            future.result()
    after = scrape(running)
    model = {"model": "slow", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**model, reason="queue_full", priority="1"): 7}
    assert moved(before, after, "sluice_requests_total") == {
        labels(**model, outcome="success"): 3, labels(**model, outcome="failure"): 7}


def test_an_infeasible_deadline_is_shed_at_arrival(make_server, tmp_path):
    slow_repo(tmp_path, ms=50)
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):  # let the server measure its speed
            stub.ModelInfer(request("slow"))
        backlog = [stub.ModelInfer.future(request("slow")) for _ in range(8)]
        wait_queued(running, "slow", 6)  # >= 300 ms of work ahead
        computed = served(running, "slow").stats.execution_count
        for kw in ({"timeout": 0.25}, {}):
            message = request("slow") if kw else request("slow", timeout=150_000)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer.with_call(message, **kw)
            shed = outcome_of_error(info.value)
            # refused at once as infeasible: UNAVAILABLE, not a DEADLINE_EXCEEDED later
            assert shed.code == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert shed.reason == "deadline" and shed.pushback_ms >= 1
            assert "cannot finish by its deadline" in info.value.details()
        for future in backlog:
            future.result()
    stats = served(running, "slow").stats
    assert stats.execution_count == computed + 8  # the shed requests were never computed
    after = scrape(running)
    model = {"model": "slow", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**model, reason="deadline", priority="1"): 2}
    assert moved(before, after, "sluice_requests_total") == {
        labels(**model, outcome="success"): 10, labels(**model, outcome="failure"): 2}


def test_an_expired_request_never_reaches_the_backend(make_server, tmp_path):
    slow_repo(tmp_path, ms=5)
    running = make_server(tmp_path)
    version = served(running, "slow")
    expired = InferRequest("slow", "", {"IN_x": np.ones((1, WIDTH), np.float32)},
                           deadline=time.monotonic() - 0.001)
    with pytest.raises(DeadlineExceeded, match="deadline passed before queueing"):
        running.call(version.infer(expired))
    assert version.stats.execution_count == 0
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):  # once the speed is measured, a hopeless deadline is shed too
            stub.ModelInfer(request("slow"))
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("slow"), timeout=1e-6)
            outcome = outcome_of_error(info.value)
            assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED or (
                outcome.code == grpc.StatusCode.UNAVAILABLE and outcome.reason == "deadline"
            ), outcome
    assert version.stats.execution_count == 2


def test_requests_that_expire_in_the_queue_are_never_executed(make_server, tmp_path):
    slow_repo(tmp_path, ms=300)
    running = make_server(tmp_path)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        blocker = stub.ModelInfer.future(request("slow"))
        while served(running, "slow").queue_stats()["busy_instances"] < 1:
            time.sleep(0.002)
        # Nothing has been measured yet, so admission lets them in; they expire while queued.
        doomed = [stub.ModelInfer.future(request("slow", timeout=20_000)) for _ in range(5)]
        blocker.result()
        for future in doomed:
            with pytest.raises(grpc.RpcError) as info:
                future.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "in the queue" in info.value.details()
    stats = served(running, "slow").stats
    assert stats.execution_count == 1 and stats.inference_count == 1
    assert stats.fail_count == 5


# -- priorities ---------------------------------------------------------------------------------


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


# -- 3x overload --------------------------------------------------------------------------------


async def open_loop(address: str, rate_per_s: float, duration_s: float, make) -> list[Outcome]:
    """Send ``make(i) -> (message, priority, deadline_s)`` at a constant rate (never waiting for
    answers), then wait for every answer."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one(message, priority: int, deadline_s: float | None) -> Outcome:
            sent = time.monotonic()
            try:
                reply = await stub.ModelInfer(message, timeout=deadline_s)
            except grpc.aio.AioRpcError as exc:
                return outcome_of_error(exc, priority=priority, sent=sent)
            return outcome_of_reply(reply, priority=priority, sent=sent)

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(int(rate_per_s * duration_s)):
            delay = start + i / rate_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(*make(i))))
        return list(await asyncio.gather(*tasks))


async def calibrate(address: str, name: str, duration_s: float = 1.0) -> float:
    """Measured capacity (requests/s) of a max_batch_size 1 model: completions over a short
    closed-loop run, with this process's client load included (it shares the machine)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request(name))
        done = 0
        stop = time.monotonic() + duration_s

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await stub.ModelInfer(request(name))
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(4)))
        return done / (time.monotonic() - start)


async def test_overload_without_deadlines_answers_everyone_once_and_queues_stay_bounded(
    make_server, tmp_path
):
    slow_repo(tmp_path, ms=8, batching="default_queue_policy { max_queue_size: 40 }",
              params={"max_queue_rows": "24", "max_queue_bytes": str(20 * WIDTH * 4)})
    running = make_server(tmp_path, max_inflight_bytes=64 * WIDTH * 4)
    rate = 3 * await calibrate(running.address, "slow")
    sent = int(rate * 2.0)
    before = served(running, "slow").stats
    answered_before = before.success_count + before.fail_count
    outcomes = await open_loop(running.address, rate, 2.0,
                               lambda i: (request("slow"), 0, None))
    assert len(outcomes) == sent
    codes = Counter((o.code, o.reason) for o in outcomes)
    assert set(codes) <= {(grpc.StatusCode.OK, None),
                          (grpc.StatusCode.UNAVAILABLE, "queue_full")}, codes
    assert codes[(grpc.StatusCode.OK, None)] > 0 and codes[
        (grpc.StatusCode.UNAVAILABLE, "queue_full")] > 0
    queue = served(running, "slow").queue_stats()
    assert queue["peak_queued_rows"] <= 20 and queue["peak_queued_bytes"] <= 20 * WIDTH * 4
    assert running.server.inflight.peak_bytes <= 64 * WIDTH * 4
    assert running.server.inflight.bytes == 0  # everything released
    stats = served(running, "slow").stats
    assert stats.success_count + stats.fail_count - answered_before == sent


def test_sigterm_during_overload_loses_no_admitted_request(tmp_path):
    slow_repo(tmp_path, ms=10, batching="default_queue_policy { max_queue_size: 30 }")
    proc, address = start_cli_server("--model-repository", str(tmp_path),
                                     "--shutdown-grace", "20")
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller() -> None:  # 48 callers with no think time: well over capacity
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    outcome = outcome_of_reply(stub.ModelInfer(request("slow"), timeout=30),
                                               sent=sent)
                except grpc.RpcError as exc:
                    outcome = outcome_of_error(exc, sent=sent)
                    time.sleep(0.01)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=caller) for _ in range(48)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    proc.stdout.close()
    stop.set()
    for t in threads:
        t.join(60)
    assert code == 0
    statuses = Counter((o.code, o.reason) for o in outcomes)
    assert statuses[(grpc.StatusCode.OK, None)] > 0
    assert statuses[(grpc.StatusCode.UNAVAILABLE, "queue_full")] > 0, statuses
    for o in outcomes:
        if o.code == grpc.StatusCode.OK:
            continue
        # Shed explicitly (queue full before the signal, draining after), or refused by a
        # closed listener after the signal. An admitted request never fails.
        assert o.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), o
        if o.reason is None:
            assert o.sent >= signalled, o
        else:
            assert o.reason in ("queue_full", "draining"), o


# -- size caps ----------------------------------------------------------------------------------


def test_size_caps_are_resource_exhausted_naming_the_limit(make_server, tmp_path):
    write_model(tmp_path, "two", identity_model({"a": ("FP32", ["batch", 4]),
                                                "b": ("FP32", ["batch", 4])}),
                "max_batch_size: 8\ndynamic_batching {}")
    write_model(tmp_path, "deep", identity_model({"x": ("FP32", ["batch", 2, 2, 2])}),
                "max_batch_size: 8\ndynamic_batching {}")
    write_model(tmp_path, "small_queue", identity_model({"x": ("FP32", ["batch", 4])}),
                'max_batch_size: 8\ndynamic_batching {}\n'
                'parameters { key: "max_queue_bytes" value { string_value: "64" } }')
    running = make_server(tmp_path, max_request_inputs=1, max_tensor_rank=3,
                          max_message_bytes=64 * 1024)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def refused(message, *needles):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(message)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            for needle in needles:
                assert needle in info.value.details()

        two = pb.ModelInferRequest(model_name="two")
        for name in ("IN_a", "IN_b"):
            tensor, raw = make_input(name, np.ones((1, 4), np.float32))
            two.inputs.append(tensor)
            two.raw_input_contents.append(raw)
        refused(two, "2 inputs", "max_request_inputs")
        tensor, raw = make_input("IN_x", np.ones((1, 2, 2, 2), np.float32))
        refused(pb.ModelInferRequest(model_name="deep", inputs=[tensor],
                                     raw_input_contents=[raw]), "4 dimensions", "max_tensor_rank")
        tensor, raw = make_input("IN_x", np.ones((8, 4), np.float32))  # 128 bytes
        refused(pb.ModelInferRequest(model_name="small_queue", inputs=[tensor],
                                     raw_input_contents=[raw]), "128", "max_queue_bytes")
        tensor, raw = make_input("IN_x", np.ones((1, 4), np.float32))
        stub.ModelInfer(pb.ModelInferRequest(model_name="small_queue", inputs=[tensor],
                                             raw_input_contents=[raw]))
        # over the gRPC message limit: refused by gRPC itself, before Sluice sees it
        tensor, raw = make_input("IN_x", np.ones((4, 2, 2, 2), np.float32))
        big = pb.ModelInferRequest(model_name="deep", inputs=[tensor],
                                   raw_input_contents=[raw + b"\0" * 100_000])
        refused(big)


# -- degraded mode ------------------------------------------------------------------------------


def test_the_fallback_answers_when_the_primary_is_saturated(make_server, hold, tmp_path):
    slow_repo(tmp_path, "a_primary", ms=1,
              batching="default_queue_policy { max_queue_size: 1 }",
              params={"fallback_model": "z_small"})
    write_model(tmp_path, "z_small", identity_model({"x": ("FP32", ["batch", WIDTH])}),
                "max_batch_size: 8\ndynamic_batching {}")
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    hold.close(served(running, "a_primary").backend)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admitted = occupy(stub, running, hold, "a_primary", 1)  # full: the rest go to z_small
        degraded = [stub.ModelInfer(request("a_primary"), timeout=30) for _ in range(6)]
        hold.open()
        primary = [future.result() for future in admitted]
    assert [outcome_of_reply(r).answered_by for r in primary] == ["a_primary:1"] * 2
    assert [outcome_of_reply(r).answered_by for r in degraded] == ["z_small:1"] * 6
    assert {(r.model_name, r.model_version) for r in primary + degraded} == {("a_primary", "1")}
    after = scrape(running)
    a, z = {"model": "a_primary", "version": "1"}, {"model": "z_small", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**a, reason="queue_full", priority="1"): 6}
    assert moved(before, after, "sluice_fallback_requests_total") == {labels(**a): 6}
    # the primary counts what it shed as failed, though its fallback answered it
    assert moved(before, after, "sluice_requests_total") == {
        labels(**a, outcome="success"): 2, labels(**a, outcome="failure"): 6,
        labels(**z, outcome="success"): 6}
    assert after[("sluice_inflight_bytes", labels())] == 0


def test_when_the_fallback_is_saturated_too_the_primary_sheds(make_server, hold, tmp_path):
    for name in ("a_primary", "z_small"):
        slow_repo(tmp_path, name, ms=1, batching="default_queue_policy { max_queue_size: 1 }",
                  params={"fallback_model": "z_small"} if name == "a_primary" else {})
    running = make_server(tmp_path, metrics_port=0)
    before = scrape(running)
    hold.close(served(running, "a_primary").backend, served(running, "z_small").backend)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admitted = []
        for started, name in ((1, "a_primary"), (2, "z_small")):  # one computing, one queued
            admitted.append(stub.ModelInfer.future(request("a_primary"), timeout=30))
            hold.wait_started(started)
            admitted.append(stub.ModelInfer.future(request("a_primary"), timeout=30))
            wait_queued(running, name, 1)
        for _ in range(6):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request("a_primary"), timeout=30)
            assert shed_status(info.value) == (  # the primary's shed, not the fallback's
                grpc.StatusCode.UNAVAILABLE, "queue_full",
                "model 'a_primary:1': queue full (1 requests at priority 1)")
        hold.open()
        answered = [outcome_of_reply(future.result()).answered_by for future in admitted]
    assert answered == ["a_primary:1"] * 2 + ["z_small:1"] * 2
    after = scrape(running)
    a, z = {"model": "a_primary", "version": "1"}, {"model": "z_small", "version": "1"}
    assert moved(before, after, "sluice_shed_total") == {
        labels(**a, reason="queue_full", priority="1"): 8,
        labels(**z, reason="queue_full", priority="1"): 6}
    # only what the fallback answered instead counts: 2 of the 8 handed to it
    assert moved(before, after, "sluice_fallback_requests_total") == {labels(**a): 2}
    assert moved(before, after, "sluice_requests_total") == {
        labels(**a, outcome="success"): 2, labels(**a, outcome="failure"): 8,
        labels(**z, outcome="success"): 2, labels(**z, outcome="failure"): 6}


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


@pytest.mark.parametrize(
    ("small", "needle"),
    [
        (None, "fallback_model 'z_small' is not loaded"),
        ({"y": ("FP32", ["batch", WIDTH])}, "input 'IN_x'"),
        ({"x": ("FP32", ["batch", WIDTH + 1])}, "input 'IN_x' is FP32 [16] here, FP32 [17]"),
    ],
)
def test_a_bad_fallback_fails_the_load_naming_it(make_server, tmp_path, small, needle):
    slow_repo(tmp_path, "a_primary", ms=1, params={"fallback_model": "z_small"})
    if small is not None:
        write_model(tmp_path, "z_small", identity_model(small),
                    "max_batch_size: 8\ndynamic_batching {}")
    running = make_server(tmp_path)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
        rows = {m.name: m for m in index.models}
        assert rows["a_primary"].state == "UNAVAILABLE"
        assert needle in rows["a_primary"].reason, rows["a_primary"].reason
        if small is not None:
            assert rows["z_small"].state == "READY"


def test_model_config_reports_the_overload_settings(make_server, tmp_path):
    slow_repo(tmp_path, ms=1, batching="priority_levels: 2 default_priority_level: 2",
              params={"latency_budget_ms": "250", "codel_target_ms": "5"})
    declared = text_format.Parse((tmp_path / "slow" / "config.pbtxt").read_text(),
                                 mc.ModelConfig())
    params = {k: v.string_value for k, v in declared.parameters.items()}
    overload = {"latency_budget_ms", "codel_target_ms"}
    assert overload <= params.keys() and overload <= OVERLOAD_PARAMETERS
    running = make_server(tmp_path)
    with grpc.insecure_channel(running.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="slow")).config
    batching = config.dynamic_batching
    assert (batching.priority_levels, batching.default_priority_level) == (
        declared.dynamic_batching.priority_levels,
        declared.dynamic_batching.default_priority_level)
    reported = {k: v.string_value for k, v in config.parameters.items()}
    assert reported.pop("sluice.execution_providers") == "CPUExecutionProvider"
    # every parameter the file declares and no other; the overload ones as the same numbers
    assert reported.keys() == params.keys()
    assert {k: float(reported[k]) for k in overload} == {k: float(params[k]) for k in overload}
    assert {k: reported[k] for k in params.keys() - overload} == {
        k: params[k] for k in params.keys() - overload}
    # ... and they are the settings admission runs with
    policy = served(running, "slow").admission.policy
    assert policy.latency_budget_s == float(params["latency_budget_ms"]) / 1000
    assert policy.codel_target_s == float(params["codel_target_ms"]) / 1000
