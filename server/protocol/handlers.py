"""Small tools for gRPC method handlers: rebuild one around another behavior, read a request's
model and version for the audit trail, and a handler that only refuses."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
#: Largest raw request a refusal parses for its model name (a refused caller gets no more).
_PARSE_LIMIT = 64 * 1024


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return (handler.unary_unary or handler.unary_stream or handler.stream_unary
            or handler.stream_stream)


def rebuild(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """``handler`` (same kind, deserializer and serializer) with ``behavior`` instead."""
    factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(behavior, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


def guarded(handler: grpc.RpcMethodHandler,
            check: Callable[[Any], Awaitable[None]]) -> grpc.RpcMethodHandler:
    """``handler`` whose behavior first awaits ``check(context)`` (which may abort the call).
    Async generators stay async generators, coroutines stay coroutines (grpc.aio runs anything
    else on a thread pool)."""
    inner = behavior_of(handler)
    if inspect.isasyncgenfunction(inner):
        async def stream(request: Any, context: Any) -> Any:
            await check(context)
            async for item in inner(request, context):
                yield item
        return rebuild(handler, stream)

    async def call(request: Any, context: Any) -> Any:
        await check(context)
        return await inner(request, context)
    return rebuild(handler, call)


def refusal(handler: grpc.RpcMethodHandler | None,
            refuse: Callable[[Any, Any], Awaitable[None]]) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind (unary when None) that only awaits
    ``refuse(raw request or None, context)``, which aborts. The request is not deserialized:
    a unary one arrives as bytes, a stream is never read."""
    kind = (False, False) if handler is None else (handler.request_streaming,
                                                   handler.response_streaming)

    async def deny(request: Any, context: Any) -> None:
        await refuse(request if isinstance(request, bytes) else None, context)

    return _FACTORIES[kind](deny)


def model_and_version(request: Any) -> tuple[str, str]:
    """The model name and version a request names (by its field names), else empty strings."""
    model = version = ""
    for field in ("model_name", "name", "model"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            model = value
            break
    for field in ("model_version", "version"):
        value = getattr(request, field, None)
        if isinstance(value, str | int) and not isinstance(value, bool) and value:
            version = str(value)
            break
    return model, version


def parsed_model(handler: grpc.RpcMethodHandler | None, raw: bytes | None) -> tuple[str, str]:
    """:func:`model_and_version` of a refused unary request's raw bytes ("" when there are none,
    they are large, or they do not parse)."""
    if handler is None or raw is None or len(raw) > _PARSE_LIMIT:
        return "", ""
    parse = handler.request_deserializer
    if parse is None:
        return "", ""
    try:
        return model_and_version(parse(raw))
    except Exception:  # a refusal never fails on the caller's bytes
        return "", ""
