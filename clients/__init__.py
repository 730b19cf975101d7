"""Sluice clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), and
:class:`AdminClient` for the ``sluice.admin.v1.Admin`` service (deployments, shadow, canary).

Client and AsyncClient speak the KServe v2 / Triton gRPC protocol, send and receive raw
tensors, honour deadlines, retry only UNAVAILABLE (honouring the server's pushback, within a 10%
retry budget) and raise typed :class:`SluiceClientError` subclasses. All import :mod:`sluice.proto`
only, never the server. Each takes ``credentials=tls_credentials(ca=..., cert=..., key=...)``
for a server that speaks TLS (and mTLS).
"""

from sluice.clients.admin import AdminClient
from sluice.clients.async_client import AsyncClient
from sluice.clients.client import Client
from sluice.clients.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    SluiceClientError,
    Unauthenticated,
    Unimplemented,
    error_from_rpc,
)
from sluice.clients.messages import StreamResult
from sluice.clients.retry import RetryBudget, RetryPolicy
from sluice.clients.tls import tls_credentials

__all__ = [
    "AdminClient",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "SluiceClientError",
    "StreamResult",
    "Unauthenticated",
    "Unimplemented",
    "error_from_rpc",
    "tls_credentials",
]
