"""One table from Sluice's error codes to gRPC status codes, and the helpers that apply it."""

from __future__ import annotations

import logging
import uuid

import grpc

from sluice.proto.tensors import TensorError
from sluice.server.errors import Code, Overloaded, SluiceError

log = logging.getLogger(__name__)

GRPC_CODES: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.CANCELLED: grpc.StatusCode.CANCELLED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,  # system shared memory
}

#: Trailer telling gRPC retry policies (and our clients) how long to back off.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: Trailer with the machine-readable shed reason (queue_full, deadline, priority,
#: standing_queue, draining).
SHED_REASON_KEY = "sluice-shed-reason"


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(code, message, trailers) for any exception raised while serving a request.

    Unexpected exceptions become INTERNAL with a correlation id; the traceback is logged here,
    once, and never sent to the client.
    """
    if isinstance(exc, SluiceError):
        trailers: tuple[tuple[str, str], ...] = ()
        if exc.retry_after_ms is not None:
            trailers += ((PUSHBACK_KEY, str(exc.retry_after_ms)),)
        if isinstance(exc, Overloaded):
            trailers += ((SHED_REASON_KEY, exc.reason),)
        return GRPC_CODES[exc.code], exc.message, trailers
    if isinstance(exc, TensorError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), ()
    incident = uuid.uuid4().hex[:12]
    log.error("internal error (incident %s)", incident, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})", ()


def fail(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Set the RPC's status from ``exc``; the handler then returns an empty message."""
    code, message, trailers = to_status(exc)
    context.set_code(code)
    context.set_details(message)
    if trailers:
        context.set_trailing_metadata(trailers)
