"""The one gRPC interceptor that authenticates, authorizes and meters every call (``--tokens``).

Installed only when a tokens file is given: without one the server has no interceptor at all,
and a call costs what it did before. With one, each call:

1. looks its method up in :data:`~sluice.server.protocol.access.SCOPE_OF` (health: exempt);
2. reads ``authorization: Bearer <token>`` from the metadata; a token seen before costs a keyed
   hash and a dict lookup (:mod:`sluice.server.auth.verifier`), a new one its KDF once, on a
   thread (at most ``kdf_threads`` at a time; callers of one token share one run). Without the
   header, an mTLS client certificate whose common name the tokens file maps is accepted (read
   from the call's auth context, so checked as the handler starts);
3. refuses: no or bad credentials UNAUTHENTICATED; a method the table does not name, or a scope
   the principal lacks, PERMISSION_DENIED naming the scope; an empty quota bucket
   RESOURCE_EXHAUSTED. Each refusal is counted and audited (never with the token);
4. leaves the principal's name in :data:`PRINCIPAL` for the handler (the deployment audit's
   caller, the access audit's principal), then hands the call on.

A stream is authorized, and metered, once when it opens.

Cost, measured (grpc.aio's own interceptor chain replayed around ``intercept_service``, a known
token, 5 x 200k calls, the best run, on the loaded 2-core development box): 7-8 us a call, of
which the keyed BLAKE2b digest is ~1 us; a quota adds a clock read and a few float operations.
An allowed call's handler comes from a per-method cache after the first, not through
grpc.aio's continuation (c=1 p50 -10 us against resolving it each call, TLS and tokens on both,
calls alternated between the two servers: ``loadtests.paired``). Without ``--tokens`` nothing
is installed: 0 us. A small-model request costs ~1-2 ms of server CPU on that box, so the check
is well under 1% of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from sluice.server.auth.audit import AuditTrail
from sluice.server.auth.verifier import Principal, TokenVerifier
from sluice.server.protocol.access import EXEMPT, SCOPE_OF
from sluice.server.protocol.handlers import guarded, parsed_model, refusal

#: The authenticated principal of the call being handled (None: no tokens configured).
PRINCIPAL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sluice_principal", default=None)
_BEARER = ("Bearer ", "bearer ", "BEARER ")
#: The auth context property naming an mTLS peer certificate's common name.
_COMMON_NAME = "x509_common_name"
_Handler = grpc.RpcMethodHandler


class Refused(Exception):
    """A call refused: its gRPC ``code``, the ``message`` for the caller, the principal."""

    def __init__(self, code: grpc.StatusCode, message: str, principal: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.principal = code, message, principal


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Enforces ``table`` (method -> scope) with the principals of ``verifier``."""

    def __init__(self, verifier: TokenVerifier, audit: AuditTrail | None = None, *,
                 table: dict[str, str] = SCOPE_OF, clock: Callable[[], float] = time.monotonic,
                 kdf_threads: int = 2) -> None:
        self._verifier = verifier
        self._audit = audit
        self._table = table
        self._clock = clock
        self._kdf_slots = asyncio.Semaphore(kdf_threads)
        self._pending: dict[bytes, asyncio.Future[Principal | None]] = {}
        self._by_certificate: dict[str, _Handler] = {}
        #: Each allowed method's handler, resolved through ``continuation`` once: this is the
        #: server's only interceptor, so the continuation only looks up the handler, which is
        #: fixed once the services are registered (before the server starts); skipping it
        #: saves grpc.aio's chain coroutine and lookup on every call.
        self._handlers: dict[str, _Handler] = {}
        #: Refused calls by status code name.
        self.refused: Counter[str] = Counter()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[_Handler | None]], details: Any,
    ) -> _Handler | None:
        method = details.method
        scope = self._table.get(method)
        if scope == EXEMPT:
            return await continuation(details)
        header = None
        for key, value in details.invocation_metadata:
            if key == "authorization":
                header = value
                break
        try:
            if header is None:
                if self._verifier.has_certificates:
                    return await self._certificate_handler(continuation, details, scope)
                raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                               "credentials required: send metadata 'authorization: Bearer "
                               "<token>' (sluice --token, or $SLUICE_TOKEN)")
            verifier = self._verifier
            if type(header) is str and header[:7] in _BEARER:  # the common case, inline
                principal = verifier.cached(verifier.digest(header[7:].strip())) or \
                    await self._authenticate(header)
            else:
                principal = await self._authenticate(header)
            self._allow(principal, method, scope)
        except Refused as refused:
            return self._refusal(await continuation(details), method, refused)
        PRINCIPAL.set(principal.name)
        handler = self._handlers.get(method)
        if handler is None:
            handler = await continuation(details)
            if handler is not None:
                self._handlers[method] = handler
        return handler

    async def authorize(self, header: str | None, method: str, peer: str,
                        common_name: str = "", model: str = "") -> str:
        """The name of the principal that may call ``method`` (a gRPC method name, which
        another door such as REST maps its routes to) with ``Authorization`` ``header``, or
        without one the mTLS certificate of ``common_name``; raises :class:`Refused`, counted
        and audited as this interceptor's own refusals are."""
        scope = self._table.get(method)
        if scope == EXEMPT:
            return "anonymous"
        try:
            if header is not None:
                principal = await self._authenticate(header)
            else:
                found = self._verifier.certificate(common_name) if common_name else None
                if found is None:
                    raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                                  "credentials required: send header 'Authorization: Bearer "
                                  "<token>'")
                principal = found
            self._allow(principal, method, scope)
        except Refused as refused:
            self.refused[refused.code.name] += 1
            if self._audit is not None:
                self._audit.record(principal=refused.principal, peer=peer, method=method,
                                   model=model, version="", outcome="refused",
                                   status=refused.code.name)
            raise
        return principal.name

    # -- checks -------------------------------------------------------------------------------

    async def _authenticate(self, header: Any) -> Principal:
        if not isinstance(header, str) or header[:7] not in _BEARER:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                           "metadata 'authorization' must be 'Bearer <token>'")
        token = header[7:].strip()
        verifier = self._verifier
        digest = verifier.digest(token)
        principal = verifier.cached(digest)
        if principal is None:
            principal = await self._verify(token, digest)
            if principal is None:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid "
                               "(unknown, revoked or mistyped)")
        return principal

    def _allow(self, principal: Principal, method: str, scope: str | None) -> None:
        if scope is None:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                           f"method {method[:200]} is open to no scope", principal.name)
        if scope not in principal.scopes:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                           f"'{principal.name}' lacks scope '{scope}', which {method} needs",
                           principal.name)
        bucket = principal.bucket
        if bucket is not None and not bucket.take(self._clock()):
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"'{principal.name}' is over its request quota "
                           f"({bucket.describe()})", principal.name)

    async def _verify(self, token: str, digest: bytes) -> Principal | None:
        verifier = self._verifier
        if not verifier.needs_kdf(token, digest):
            return verifier.verify(token, digest)  # refused without a KDF, or just cached
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._run_kdf(token, digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda _done: self._pending.pop(digest, None))
        return await asyncio.shield(pending)

    async def _run_kdf(self, token: str, digest: bytes) -> Principal | None:
        async with self._kdf_slots:
            return await asyncio.to_thread(self._verifier.verify, token, digest)

    async def _certificate_handler(self, continuation: Callable[[Any], Awaitable[_Handler | None]],
                                   details: Any, scope: str | None) -> _Handler | None:
        """The method's handler, checking the peer certificate's mapping as it starts."""
        method = details.method
        checked = self._by_certificate.get(method)
        if checked is None:
            handler = await continuation(details)
            if handler is None:
                return None

            async def check(context: Any) -> None:
                principal = self._verifier.certificate(_common_name(context))
                try:
                    if principal is None:
                        raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                                       "credentials required: a bearer token, or a client "
                                       "certificate this server maps to scopes")
                    self._allow(principal, method, scope)
                except Refused as refused:
                    await self._refuse(context, method, refused, "", "")
                PRINCIPAL.set(principal.name)  # type: ignore[union-attr]

            checked = self._by_certificate[method] = guarded(handler, check)
        return checked

    # -- refusals -----------------------------------------------------------------------------

    def _refusal(self, handler: _Handler | None, method: str, refused: Refused) -> _Handler:
        async def refuse(raw: bytes | None, context: Any) -> None:
            model, version = parsed_model(handler, raw)
            await self._refuse(context, method, refused, model, version)
        return refusal(handler, refuse)

    async def _refuse(self, context: Any, method: str, refused: Refused, model: str,
                      version: str) -> None:
        self.refused[refused.code.name] += 1
        if self._audit is not None:
            self._audit.record(principal=refused.principal, peer=str(context.peer() or ""),
                               method=method, model=model, version=version,
                               outcome="refused", status=refused.code.name)
        await context.abort(refused.code, refused.message)


def _common_name(context: Any) -> str:
    values = context.auth_context().get(_COMMON_NAME) or ()
    return values[0].decode("utf-8", "replace") if values else ""
