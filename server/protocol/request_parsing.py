"""Requests that are not valid protobuf, answered INVALID_ARGUMENT naming the message type, on
every RPC of every service the server registers (inference, admin, health, reflection).

grpc.aio calls a method's ``request_deserializer`` before the handler runs; when it raises (a
``DecodeError`` for bytes that do not parse), grpc.aio answers UNKNOWN ``Unexpected <class
'google.protobuf.message.DecodeError'>: ...``, a status the caller cannot act on and that reads
as a server bug. A deserializer cannot set a status, so here it never raises: a
:func:`tolerant` deserializer returns the message, or for bytes that do not parse the type's
:class:`Unparsable` marker, and the handler answers the marker INVALID_ARGUMENT.

:class:`GuardedServices` stands in for the gRPC server while services register (the generated
``add_..._to_server`` functions call it as they call the server) and guards each handler it
is given: its deserializer made tolerant, its behaviour wrapped to refuse the marker (a
request stream: each message as it is read). A handler whose deserializer is already tolerant
is registered as it is: ModelInfer and ModelStreamInfer check the marker themselves, so the
hot path pays one Python call around ``FromString`` and one ``type(...) is`` test, and no
extra coroutine (:mod:`sluice.server.protocol.wire`).

Promises: a guarded RPC never answers UNKNOWN for a request that does not parse; the message
names the message type and nothing of the bytes received; a message that
parses reaches the handler unchanged (the same object ``FromString`` made).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

from sluice.server.errors import InvalidInput


class Unparsable:
    """What a :func:`tolerant` deserializer returns for bytes that do not parse as its type.

    One instance per message type; ``error`` is the refusal to answer with."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    @property
    def message(self) -> str:
        return f"the request is not a valid {self.type_name} message (it does not parse)"

    def error(self) -> InvalidInput:
        return InvalidInput(self.message)


def _type_name(parse: Callable[[bytes], Any]) -> str:
    """The protobuf full name of the type ``parse`` (a message class's ``FromString``) makes."""
    owner = getattr(parse, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or "protobuf"


def tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``parse`` (e.g. ``ModelInferRequest.FromString``) that returns the type's
    :class:`Unparsable` marker instead of raising."""
    if getattr(parse, "sluice_tolerant", False):
        return parse
    bad = Unparsable(_type_name(parse))

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError; whatever the runtime raises, the bytes do not parse
            return bad

    deserialize.sluice_tolerant = True  # type: ignore[attr-defined]
    deserialize.unparsable = bad  # type: ignore[attr-defined]
    return deserialize


#: Called with (method, status code) for each request refused here (the server counts them).
OnRefused = Callable[[str, grpc.StatusCode], None]


def _refuse(method: str, bad: Unparsable, on_refused: OnRefused | None) -> str:
    if on_refused is not None:
        on_refused(method, grpc.StatusCode.INVALID_ARGUMENT)
    return bad.message


def guard(
    handler: grpc.RpcMethodHandler, method: str, on_refused: OnRefused | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` (of full method name ``method``) with a tolerant deserializer and a
    behaviour that answers an unparsable request INVALID_ARGUMENT."""
    parse = handler.request_deserializer
    if parse is None or getattr(parse, "sluice_tolerant", False):
        return handler
    deserialize = tolerant(parse)
    serialize = handler.response_serializer
    if handler.request_streaming:
        inner = handler.stream_stream if handler.response_streaming else handler.stream_unary

        async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                if type(request) is Unparsable:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        _refuse(method, request, on_refused))
                yield request

        behaviour = _wrap(inner, lambda requests, context: (checked(requests, context), None))
        factory = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
                   else grpc.stream_unary_rpc_method_handler)
    else:
        inner = handler.unary_stream if handler.response_streaming else handler.unary_unary

        def first(request: Any, context: Any) -> tuple[Any, Unparsable | None]:
            return request, request if type(request) is Unparsable else None

        behaviour = _wrap(inner, first, method, on_refused)
        factory = (grpc.unary_stream_rpc_method_handler if handler.response_streaming
                   else grpc.unary_unary_rpc_method_handler)
    return factory(behaviour, request_deserializer=deserialize, response_serializer=serialize)


def _wrap(
    inner: Callable[..., Any], prepare: Callable[[Any, Any], tuple[Any, Unparsable | None]],
    method: str = "", on_refused: OnRefused | None = None,
) -> Callable[..., Any]:
    """``inner`` called with ``prepare``'s request (refused first when it is Unparsable), of
    the same kind as ``inner``: an async generator function stays one."""
    if inspect.isasyncgenfunction(inner):

        async def generate(request: Any, context: Any) -> AsyncIterator[Any]:
            request, bad = prepare(request, context)
            if bad is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    _refuse(method, bad, on_refused))
            async for item in inner(request, context):
                yield item

        return generate

    async def call(request: Any, context: Any) -> Any:
        request, bad = prepare(request, context)
        if bad is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refuse(method, bad, on_refused))
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded (each guarded once, then cached)."""

    def __init__(self, inner: grpc.GenericRpcHandler, on_refused: OnRefused | None) -> None:
        self._inner = inner
        self._on_refused = on_refused
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        found = self._guarded.get(method)
        if found is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None  # not ours; never cached (callers choose method names)
            found = self._guarded[method] = guard(handler, method, self._on_refused)
        return found


class GuardedServices:
    """Register services on ``server`` through this, as on the server itself: every handler is
    :func:`guard`-ed. ``on_refused(method, code)`` counts the refusals."""

    def __init__(self, server: grpc.aio.Server, on_refused: OnRefused | None = None) -> None:
        self._server = server
        self._on_refused = on_refused

    def add_generic_rpc_handlers(self, generic_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedGeneric(handler, self._on_refused) for handler in generic_handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(service, {
            name: guard(handler, f"/{service}/{name}", self._on_refused)
            for name, handler in handlers.items()
        })
