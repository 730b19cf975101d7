"""Sluice clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak the KServe v2 / Triton gRPC protocol, send and receive raw tensors, honour deadlines,
retry only UNAVAILABLE (honouring the server's pushback, within a 10% retry budget) and raise
typed :class:`SluiceClientError` subclasses. They import :mod:`proto` only, never the server.
"""

from clients.async_client import AsyncClient
from clients.client import Client
from clients.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    ResourceExhausted,
    ServerError,
    SluiceClientError,
    Unimplemented,
    error_from_rpc,
)
from clients.messages import StreamResult
from clients.retry import RetryBudget, RetryPolicy

__all__ = [
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "ResourceExhausted",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "SluiceClientError",
    "StreamResult",
    "Unimplemented",
    "error_from_rpc",
]
