"""Bearer tokens on every call of a client's channel.

A server started with ``sluice serve --tokens FILE`` wants gRPC metadata ``authorization:
Bearer <token>`` on every call. Our clients take ``token=``; None reads ``$SLUICE_TOKEN`` (unset
or empty: no token, for a server without ``--tokens``). The token rides on a channel
interceptor, so every call, present or future, carries it. tritonclient users pass
``headers={"authorization": "Bearer <token>"}`` to each call instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

#: The environment variable a token is read from when none is given.
TOKEN_ENV = "SLUICE_TOKEN"


def resolve_token(token: str | None) -> str | None:
    """``token``, else ``$SLUICE_TOKEN``; None when neither is set (or both are empty)."""
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    return token.strip() or None if token else None


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that carries ``token`` (tritonclient: ``headers=dict(...)``)."""
    return (("authorization", f"Bearer {token}"),)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _SyncBearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = bearer_metadata(token)

    def _add(self, details: Any) -> _Details:
        metadata = tuple(details.metadata or ()) + self._header
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                               request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any,
                               requests: Any) -> Any:
        return continuation(self._add(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any,
                                requests: Any) -> Any:
        return continuation(self._add(details), requests)


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """``channel`` sending ``token`` (resolved by :func:`resolve_token`) on every call."""
    token = resolve_token(token)
    return channel if token is None else grpc.intercept_channel(channel, _SyncBearer(token))


class _AioBearer(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                 grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = bearer_metadata(token)

    def _add(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + self._header))
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._add(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._add(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._add(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      requests: Any) -> Any:
        return await continuation(self._add(details), requests)


def aio_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor] | None:
    """Interceptors for ``grpc.aio`` channels sending ``token`` (resolved as above)."""
    token = resolve_token(token)
    return None if token is None else [_AioBearer(token)]
