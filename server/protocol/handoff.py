"""Finished requests as the monitors see them (:class:`~sluice.server.monitoring.hub.Finished`).

The servicer asks the hub ``wants(model)`` once per request (a dict lookup: the whole cost for a
model nobody watches) and, for a watched model, offers one record built here when the request
is answered or fails. Arrays are the request's and the response's own, never copied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto.tensors import TensorError
from sluice.server.errors import SluiceError
from sluice.server.monitoring.hub import Finished
from sluice.server.types import InferRequest, InferResponse


def status_name(exc: BaseException) -> str:
    """The status code name a failure is answered with (as :func:`.status.to_status` maps it,
    without its logging of unexpected errors)."""
    if isinstance(exc, SluiceError):
        return exc.code.name
    if isinstance(exc, TensorError):
        return "INVALID_ARGUMENT"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return "INTERNAL"


def answered(
    request: InferRequest, route: tuple[Any, str | None, Any], response: InferResponse,
    started: float,
) -> Finished:
    """The record of ``request``, answered with ``response`` on ``route`` (the servicer's
    (served version, arm, shadows)); ``started``: its ``time.perf_counter()`` at arrival."""
    now = time.perf_counter()
    return Finished(
        request.id, time.time(), request.model_name, route[0].version, route[1] or "", "",
        response.outputs, request.inputs, now - started, "OK", request.parameters,
    )


def note_route(exc: BaseException, request: InferRequest, route: tuple[Any, Any, Any]) -> None:
    """Remember on ``exc`` the decoded request and route it failed on (an exception raised
    while answering on the loop leaves the caller neither)."""
    exc.sluice_routed = (request, route)  # type: ignore[attr-defined]


def failed(
    message: pb.ModelInferRequest | InferRequest, request: InferRequest | None,
    route: tuple[Any, str | None, Any] | None, started: float, exc: BaseException,
    new_id: Callable[[], str],
) -> Finished:
    """The record of a request that failed with ``exc``; ``request`` / ``route`` are None when
    it failed before being decoded / routed (version 0 then: none was chosen)."""
    now = time.perf_counter()
    if request is None:
        request, route = getattr(exc, "sluice_routed", (None, None))
    if request is None:
        return Finished(
            message.id or new_id(), time.time(), message.model_name, 0, "", "", {}, {},
            now - started, status_name(exc),
        )
    return Finished(
        request.id, time.time(), request.model_name, route[0].version if route else 0,
        (route[1] or "") if route else "", "", {}, request.inputs, now - started,
        status_name(exc), request.parameters,
    )
