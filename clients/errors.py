"""Typed client errors, and the one mapping from gRPC failures to them.

Every failure a client method raises on purpose is a :class:`SluiceClientError` carrying the
gRPC status code and the server's message (which names the offending model, version or input).
Callers catch the subclass they can act on: :class:`Overloaded` (back off, maybe retry later),
:class:`InvalidInput` (fix the request), :class:`ModelNotFound` (wrong name or version), ...
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

__all__ = [
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "ResourceExhausted",
    "ServerError",
    "SluiceClientError",
    "Unimplemented",
    "error_from_rpc",
    "error_from_status",
    "error_from_stream_message",
]

#: Trailer with the server's back-off request in milliseconds (gRPC's own retry key).
PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: Trailer with Sluice's machine-readable shed reason (queue_full, deadline, priority, draining).
SHED_REASON_KEY = "sluice-shed-reason"


class SluiceClientError(Exception):
    """A request failed. ``code`` is the gRPC status, ``details`` the server's message.

    ``attempts`` is how many times the request was sent before giving up (1 without retries).
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, attempts: int = 1) -> None:
        super().__init__(f"[{code.name}] {details}")
        self.code = code
        self.details = details
        self.attempts = attempts


class ModelNotFound(SluiceClientError):
    """NOT_FOUND: no such model, or no such version of it."""


class InvalidInput(SluiceClientError):
    """INVALID_ARGUMENT: wrong datatype, shape, input name or parameter; ``details`` names it.

    Also raised locally, before sending, for arrays with no KServe datatype.
    """


class Overloaded(SluiceClientError):
    """UNAVAILABLE: the server shed the request (or could not be reached).

    ``retry_after_ms`` is the server's ``grpc-retry-pushback-ms`` trailer (None when absent or
    unparseable; negative means "do not retry"), ``reason`` its ``sluice-shed-reason`` trailer.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        attempts: int = 1,
        retry_after_ms: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(code, details, attempts=attempts)
        self.retry_after_ms = retry_after_ms
        self.reason = reason


class DeadlineExceeded(SluiceClientError):
    """DEADLINE_EXCEEDED: the deadline passed before any attempt failed, or during an attempt
    (on the server or on the wire). A deadline that passes while waiting to retry raises the last
    Overloaded instead."""


class ResourceExhausted(SluiceClientError):
    """RESOURCE_EXHAUSTED: a size or quota limit (message too large, quota spent)."""


class Unimplemented(SluiceClientError):
    """UNIMPLEMENTED: the server does not support this RPC, parameter or extension."""


class Unauthenticated(SluiceClientError):
    """UNAUTHENTICATED: no token, or one the server does not know (``token=``/$SLUICE_TOKEN)."""


class PermissionDenied(SluiceClientError):
    """PERMISSION_DENIED: the token lacks the scope the call needs (the message names it)."""


class ServerError(SluiceClientError):
    """INTERNAL, UNKNOWN or any other status: report it, retrying will not help."""


_CLASSES: dict[grpc.StatusCode, type[SluiceClientError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.UNAVAILABLE: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,  # authz
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,  # authz
}


def _parse_pushback(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def error_from_status(
    code: grpc.StatusCode, details: str, trailers: Iterable[Any] = ()
) -> SluiceClientError:
    """The error subclass for ``code``; trailers fill Overloaded's pushback and reason."""
    cls = _CLASSES.get(code, ServerError)
    if cls is Overloaded:
        found: dict[str, str] = {}
        for key, value in trailers:
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            found.setdefault(key, value)
        return Overloaded(
            code,
            details,
            retry_after_ms=_parse_pushback(found.get(PUSHBACK_KEY)),
            reason=found.get(SHED_REASON_KEY),
        )
    return cls(code, details)


def error_from_rpc(exc: grpc.RpcError) -> SluiceClientError:
    """Map a failed call (``grpc.RpcError`` from the sync API or ``grpc.aio.AioRpcError``) to
    the matching subclass; the original error becomes ``__cause__``.
    """
    call: Any = exc  # both kinds implement grpc.Call's code()/details()/trailing_metadata()
    if not callable(getattr(call, "code", None)):  # a bare RpcError raised by other code
        error: SluiceClientError = ServerError(grpc.StatusCode.UNKNOWN, str(exc))
    else:
        error = error_from_status(call.code(), call.details() or "", call.trailing_metadata() or ())
    error.__cause__ = exc
    return error


def error_from_stream_message(message: str) -> SluiceClientError:
    """Map a ModelStreamInfer ``error_message`` ("[CODE_NAME] text") to the matching subclass.

    A message without a recognised code prefix becomes :class:`ServerError` (code UNKNOWN).
    """
    if message.startswith("["):
        name, sep, rest = message[1:].partition("]")
        code = grpc.StatusCode.__members__.get(name) if sep else None
        if code is not None:
            return error_from_status(code, rest.lstrip())
    return ServerError(grpc.StatusCode.UNKNOWN, message)
