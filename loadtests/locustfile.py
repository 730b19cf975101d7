"""Locust load test of Sluice over gRPC: one task per bundled model, through ``clients.Client``.

    locust -f loadtests/locustfile.py --headless -u 32 -r 8 -t 30s --host 127.0.0.1:8001

Each simulated user owns one :class:`clients.Client` (one channel, ``retries=0``, so every
failure is reported as one) and loops over the tasks with no wait: a closed loop. A task sends
one request to its model and reports it to locust as ``grpc`` / ``<model>`` with the answer's
raw output bytes as its length; failures carry the typed client error (``[UNAVAILABLE] ...``).
Requests are built once per user and model from the server's ModelMetadata (random values,
``--sluice-batch`` rows), so the locustfile follows the repository rather than hard-coding it.
A failed metadata call is reported as ``<model> (metadata)`` and retried on the next task.

Tasks are tagged with their model name: ``--tags cnn digits`` runs those two only. Extra options:
``--sluice-timeout`` (seconds; the gRPC deadline of each call, default 10),
``--sluice-batch`` (rows per request, default 1) and ``--sluice-requests`` (end the run once
this many requests were reported, all users together; default 0: only ``-t`` ends it), so that a
short check ends by work done, not by a time that a slow start may spend. ``--host`` is
``HOST:PORT`` (a ``grpc://`` prefix is accepted). Load goes only where ``--host`` says; point it
at 127.0.0.1.

gRPC's blocking API would stall every greenlet of the process on each call, so gRPC is switched
to gevent's loop below, after locust has monkey-patched the standard library and before any
channel exists (this is the one module of the project with an import side effect: locust
imports it only to run it).
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, tag, task

from loadtests.models import inputs_from_metadata
from sluice.clients import Client, SluiceClientError
from sluice.clients.messages import decode_response
from sluice.proto import grpc_service_pb2 as pb

grpc_gevent.init_gevent()

MODELS = ("identity", "digits", "cnn", "add_sub", "breast_cancer", "digits_pipeline")


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument("--sluice-timeout", type=float, default=10.0,
                        help="gRPC deadline of each inference call in seconds (default 10)")
    parser.add_argument("--sluice-batch", type=int, default=1,
                        help="rows per inference request (default 1)")
    parser.add_argument("--sluice-requests", type=int, default=0,
                        help="end the run after this many requests, all users together "
                             "(default 0: no limit)")


def grpc_target(host: str) -> str:
    """``HOST:PORT`` from locust's ``--host`` (which may carry a ``grpc://`` prefix)."""
    target = host.removeprefix("grpc://").rstrip("/")
    _, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--host {host!r}: expected HOST:PORT, e.g. 127.0.0.1:8001")
    return target


class SluiceUser(User):
    """One client, one channel; each task is one ModelInfer on one bundled model."""

    host = "127.0.0.1:8001"
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.timeout_s = float(getattr(options, "sluice_timeout", 10.0))
        self.batch = int(getattr(options, "sluice_batch", 1))
        self.requests_limit = int(getattr(options, "sluice_requests", 0))
        self.client = Client(grpc_target(self.host or ""), timeout=self.timeout_s, retries=0)
        self.requests: dict[str, pb.ModelInferRequest] = {}

    def on_stop(self) -> None:
        self.client.close()

    def _fire(self, name: str, began: float, length: int, error: Exception | None) -> None:
        env = self.environment
        env.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - began) * 1e3,
            response_length=length, exception=error, context={},
        )
        if self.requests_limit:
            env.sluice_reported = getattr(env, "sluice_reported", 0) + 1
            if env.sluice_reported == self.requests_limit and env.runner is not None:
                gevent.spawn(env.runner.quit)  # not from this user's own greenlet

    def _prepared(self, model: str) -> pb.ModelInferRequest | None:
        request = self.requests.get(model)
        if request is not None:
            return request
        began = time.perf_counter()
        try:
            metadata = self.client.model_metadata(model)
            inputs = inputs_from_metadata(metadata, self.batch, seed=len(self.requests))
            request = self.client.build_request(model, inputs)
        except SluiceClientError as exc:
            self._fire(f"{model} (metadata)", began, 0, exc)
            return None
        self.requests[model] = request
        return request

    def infer(self, model: str) -> None:
        """One ModelInfer on ``model``, reported to locust (the outputs are decoded, so a
        malformed answer counts as a failure too).
        """
        request = self._prepared(model)
        if request is None:
            return
        began = time.perf_counter()
        length, error = 0, None
        try:
            response = self.client.infer_request(request)
            decode_response(response)
            length = sum(len(raw) for raw in response.raw_output_contents)
        except SluiceClientError as exc:
            error = exc
        self._fire(model, began, length, error)

    @tag("identity")
    @task
    def identity(self) -> None:
        self.infer("identity")

    @tag("digits")
    @task
    def digits(self) -> None:
        self.infer("digits")

    @tag("cnn")
    @task
    def cnn(self) -> None:
        self.infer("cnn")

    @tag("add_sub")
    @task
    def add_sub(self) -> None:
        self.infer("add_sub")

    @tag("breast_cancer")
    @task
    def breast_cancer(self) -> None:
        self.infer("breast_cancer")

    @tag("digits_pipeline")
    @task
    def digits_pipeline(self) -> None:
        self.infer("digits_pipeline")
