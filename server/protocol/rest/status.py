"""One table from Sluice's error codes to HTTP statuses, and the error answer REST sends.

The KServe v2 REST protocol answers an error with a non-200 status and ``{"error": "..."}``.
The status follows what the code means for a caller: bad input 400, unknown model 404, a
request larger than a limit (it can never fit: do not retry it) 413, a shed 503 with
``Retry-After`` (whole seconds, rounded up, as HTTP defines it) beside ``Sluice-Retry-After-Ms``
(the exact pushback gRPC sends as ``grpc-retry-pushback-ms``) and ``Sluice-Shed-Reason``, a
deadline that passed 504. The messages are the gRPC ones, built by
:func:`sluice.server.protocol.status.to_status` (unexpected errors: logged once with an incident
id, never a path or traceback).
"""

from __future__ import annotations

import math

import grpc

from sluice.server.protocol.status import PUSHBACK_KEY, SHED_REASON_KEY, to_status

#: gRPC status (as :func:`to_status` maps every error) -> HTTP status.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    # The caller left; nobody reads this (nginx's "client closed request").
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}
RETRY_AFTER_MS = "Sluice-Retry-After-Ms"
SHED_REASON = "Sluice-Shed-Reason"


def http_error(
    code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str], ...] = ()
) -> tuple[int, dict[str, str], str]:
    """(HTTP status, headers, message) of a failure answered with gRPC ``code``."""
    headers: dict[str, str] = {}
    for key, value in trailers:
        if key == PUSHBACK_KEY:
            headers["Retry-After"] = str(max(1, math.ceil(int(value) / 1000)))
            headers[RETRY_AFTER_MS] = value
        elif key == SHED_REASON_KEY:
            headers[SHED_REASON] = value
    if code == grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return HTTP_STATUS.get(code, 500), headers, message


def error_of(exc: BaseException) -> tuple[int, dict[str, str], str]:
    """(HTTP status, headers, message) of any exception raised while serving a request."""
    return http_error(*to_status(exc))
