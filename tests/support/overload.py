"""Driving a real test server into overload: models whose compute time is set by a loop count,
raw requests with Triton's priority and timeout parameters, the outcome of each call (status, shed
reason and pushback trailers), and a gate that holds chosen ORT backends' batches (``Hold``; the
``hold`` fixture is in tests/integration/overload/conftest.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto.tensors import make_input
from sluice.server.backends.ort import OrtBackend
from tests.support.onnx_models import slow_model, write_model
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


def occupy(stub, running, hold: Hold, model: str, queued: int, **kw) -> list[grpc.Future]:
    """One request computing (held at the gate) and ``queued`` more waiting behind it."""
    admitted = [stub.ModelInfer.future(request(model, **kw), timeout=30)]
    hold.wait_started(1)
    admitted += [stub.ModelInfer.future(request(model, **kw), timeout=30)
                 for _ in range(queued)]
    wait_queued(running, model, queued)
    return admitted
