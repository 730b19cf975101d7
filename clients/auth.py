"""Bearer tokens on every call of a client's channel.

A server started with ``sluice serve --tokens FILE`` wants gRPC metadata ``authorization:
Bearer <token>`` on every call. Our clients take ``token=``; None reads ``$SLUICE_TOKEN`` (unset
or empty: no token, for a server without ``--tokens``). tritonclient users pass
``headers={"authorization": "Bearer <token>"}`` to each call instead.

:class:`AsyncClient <sluice.clients.AsyncClient>` sends it as per-call metadata through
:class:`TokenStub`, not through a channel interceptor: grpc.aio runs every call of an
intercepted channel through its intercepted-call machinery (a task per call, a second await, a
``Metadata`` rebuilt), which cost 89k instructions per unary call (AsyncClient: 413k against
325k, +27%; ``python -m loadtests.auth_instructions``) and 50-110 us of client CPU on the loaded
2-core development box (``loadtests.auth_latency``), most of issue 14's c=1 budget of 100 us;
per-call metadata costs about a microsecond. The blocking clients keep :func:`with_token`'s
interceptor (grpc's sync stack runs it without a task; its cost is not measured here).
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


class TokenStub:
    """``stub`` (a generated stub) whose every method sends the bearer token's metadata with
    each call, after any ``metadata=`` the caller gives. Methods are looked up on ``stub`` once
    and kept.

    ``reuse_metadata``: a call that gives no metadata of its own is handed one
    ``grpc.aio.Metadata`` built here once, instead of a tuple grpc.aio turns into a new
    ``Metadata`` on every call (its ``Metadata.from_tuple`` and abstract-type checks: c=1 p50
    -17 us on the 2-core box, 4,000 calls alternated with the tuple). Only for a stub on a
    grpc.aio channel without client interceptors (as :class:`~sluice.clients.AsyncClient`
    opens): grpc.aio only reads it, but an interceptor may change call metadata in place."""

    def __init__(self, stub: Any, token: str, *, reuse_metadata: bool = False) -> None:
        self._stub = stub
        self._header = bearer_metadata(token)
        self._default: Any = grpc.aio.Metadata(*self._header) if reuse_metadata else self._header

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        header, default = self._header, self._default

        def call(*args: Any, metadata: Any = None, **kwargs: Any) -> Any:
            return method(*args, metadata=(*metadata, *header) if metadata else default,
                          **kwargs)

        setattr(self, name, call)  # found on the instance from now on, never here again
        return call


def token_stub(stub: Any, token: str | None, *, reuse_metadata: bool = False) -> Any:
    """``stub`` sending ``token`` (resolved by :func:`resolve_token`) with every call: a
    :class:`TokenStub`, or ``stub`` itself when there is no token."""
    token = resolve_token(token)
    return stub if token is None else TokenStub(stub, token, reuse_metadata=reuse_metadata)


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
    """Interceptors for ``grpc.aio`` channels sending ``token`` (resolved as above): for a
    channel whose calls are made elsewhere; prefer :func:`token_stub` (see the module's
    docstring for what an interceptor costs)."""
    token = resolve_token(token)
    return None if token is None else [_AioBearer(token)]
