"""Sluice's error tree. Transport-free: ``sluice.server.protocol.status`` maps :class:`Code` to
gRPC.

Every message names the offending thing (model, version, input, field) so that a caller can fix
the request without reading server logs.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """What went wrong, independent of any transport."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    UNIMPLEMENTED = "unimplemented"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    ALREADY_EXISTS = "already_exists"  # system shared memory: a region name in use


class SluiceError(Exception):
    """Base of every error Sluice raises on purpose."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: For UNAVAILABLE: how long the client should wait before retrying (pushback).
        self.retry_after_ms = retry_after_ms


class InvalidInput(SluiceError):
    """The request itself is wrong: datatype, shape, names, sizes, parameters."""

    code = Code.INVALID_ARGUMENT


class ModelNotFound(SluiceError):
    """No such model, or no such version of it."""

    code = Code.NOT_FOUND


class ModelNotReady(SluiceError):
    """The model exists but no version of it is ready to serve."""

    code = Code.UNAVAILABLE


class Overloaded(SluiceError):
    """Shed: the server cannot take the request now. Retry after ``retry_after_ms``."""

    code = Code.UNAVAILABLE

    def __init__(self, message: str, *, reason: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        #: Machine-readable reason: queue_full, deadline, priority, standing_queue, draining.
        self.reason = reason


class ResourceExhausted(SluiceError):
    """The request is larger than a limit allows (inputs, outputs, rank, bytes); retrying the
    same request cannot succeed. The message names the limit."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(SluiceError):
    """The request's deadline passed before it could be computed."""

    code = Code.DEADLINE_EXCEEDED


class Cancelled(SluiceError):
    """The caller went away."""

    code = Code.CANCELLED


class Unimplemented(SluiceError):
    """A protocol feature Sluice does not support."""

    code = Code.UNIMPLEMENTED


class AlreadyExists(SluiceError):
    """What the request would create exists already (a shared-memory region's name)."""

    code = Code.ALREADY_EXISTS


class ModelLoadError(SluiceError):
    """A model's files or config are wrong; the message names the file or field."""

    code = Code.INVALID_ARGUMENT


class BackendError(SluiceError):
    """The model runtime failed while computing a batch."""

    code = Code.INTERNAL
