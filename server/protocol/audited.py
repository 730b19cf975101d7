"""Audit lines for admin calls that were allowed, without touching any other call.

:class:`AuditedRegistrar` stands in for the gRPC server while a service registers its handlers:
the handlers of audited methods (:func:`~sluice.server.protocol.access.audited`: every call
that needs the ``admin`` scope, every call of the admin service) are wrapped to append one line
to the access audit trail with the call's outcome; every other handler reaches the server as it
was given, so inference pays nothing. It runs with or without ``--tokens`` (the principal is
then ``anonymous``; the peer is always recorded). Refused calls are audited by the auth
interceptor instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from sluice.server.auth.audit import AuditTrail
from sluice.server.protocol.access import audited
from sluice.server.protocol.auth import PRINCIPAL
from sluice.server.protocol.handlers import behavior_of, model_and_version, rebuild


def audit_handler(method: str, handler: grpc.RpcMethodHandler,
                  audit: AuditTrail) -> grpc.RpcMethodHandler:
    """``handler`` (unary-unary) recording one audit line per call as it ends."""
    inner = behavior_of(handler)
    if handler.request_streaming or handler.response_streaming:
        return handler  # no admin RPC streams; a future one needs its own wrapper

    async def call(request: Any, context: Any) -> Any:
        status = "UNKNOWN"
        try:
            response = await inner(request, context)
            code = context.code()
            status = "OK" if code is None else code.name
            return response
        except grpc.aio.AbortError:
            code = context.code()
            status = "UNKNOWN" if code is None else code.name
            raise
        finally:
            model, version = model_and_version(request)
            audit.record(principal=PRINCIPAL.get() or "anonymous",
                         peer=str(context.peer() or ""), method=method, model=model,
                         version=version, outcome="ok" if status == "OK" else "failed",
                         status=status)

    return rebuild(handler, call)


class _AuditedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, audit: AuditTrail) -> None:
        self._inner = inner
        self._audit = audit
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        method = handler_call_details.method
        if handler is None or not audited(method):
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = audit_handler(method, handler, self._audit)
        return wrapped


class AuditedRegistrar:
    """Forwards service registration to ``server``, wrapping audited methods' handlers."""

    def __init__(self, server: grpc.aio.Server, audit: AuditTrail) -> None:
        self._server = server
        self._audit = audit

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_AuditedGeneric(h, self._audit) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(service, {
            name: audit_handler(f"/{service}/{name}", h, self._audit)
            if audited(f"/{service}/{name}") else h
            for name, h in handlers.items()
        })
