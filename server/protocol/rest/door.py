"""The KServe v2 REST door (issue 17 item 1): aiohttp on the event loop grpc.aio runs on, into
the same :class:`~sluice.server.protocol.servicer.InferenceServicer`.

Why aiohttp: measured with ``perf_analyzer -i http`` on a constant-answer ``identity`` servicer
at concurrency 64 (``python -m loadtests.rest_constant``, the 2-core development box),
aiohttp's web server answered 3,900-4,300 requests/s at a p50 of 15 ms; Starlette served by
uvicorn (httptools) answered 1,440/s at 44 ms, each request waiting out a ~40 ms stall, and uvicorn
only shares a loop it did not make when its signal handling is overridden. aiohttp runs on any
running loop by design (``AppRunner`` + a site), is well kept, and needs no second thread.

Every endpoint but ``infer`` calls the servicer's own RPC method with a stand-in for the gRPC
context (:class:`_Call`) and writes its protobuf answer as JSON (:mod:`.messages`): the answers
cannot drift from gRPC's. ``infer`` decodes with :mod:`.codec` and goes the way ModelInfer goes
(:meth:`~InferenceServicer.answer_decoded`, then ``dispatch``; the monitors' hand-off), so
routing, admission, batching, statistics and metrics are the same ones. With ``--tokens`` a
route needs the scope of the gRPC method it stands for (:data:`ROUTES`), checked by the same
:class:`~sluice.server.protocol.auth.AuthInterceptor` (``Authorization: Bearer``, or a mapped
mTLS certificate); health is open, as gRPC's health service is. Bodies over ``max_body_bytes``
are refused 413 from their ``Content-Length``, before they are read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from sluice.proto import grpc_service_pb2 as pb
from sluice.server.auth.audit import AuditTrail
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import InvalidInput
from sluice.server.protocol import handoff
from sluice.server.protocol.access import audited
from sluice.server.protocol.auth import AuthInterceptor, Refused
from sluice.server.protocol.rest import codec
from sluice.server.protocol.rest.listen import Swapping, bind
from sluice.server.protocol.rest.messages import to_json
from sluice.server.protocol.rest.status import error_of, http_error
from sluice.server.protocol.servicer import InferenceServicer
from sluice.server.rollout.router import STICKY_METADATA
from sluice.server.tls_reload import CertificateReloader

log = logging.getLogger(__name__)

_GRPC = "/inference.GRPCInferenceService/"
_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Call:
    """What a servicer RPC method is handed as its gRPC context when REST calls it."""

    __slots__ = ("code", "details", "trailers")

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: tuple[tuple[str, str], ...] = ()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailers: Any) -> None:
        self.trailers = tuple(trailers)

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None


def _error(status: int, headers: dict[str, str], message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _failure(exc: BaseException) -> web.Response:
    return _error(*error_of(exc))


class RestDoor:
    """The REST routes over ``servicer``, and the listening site once :meth:`start`-ed."""

    def __init__(
        self, servicer: InferenceServicer, limits: RequestLimits, max_body_bytes: int, *,
        auth: AuthInterceptor | None = None, audit: AuditTrail | None = None,
    ) -> None:
        self._servicer = servicer
        self._limits = limits
        self._max_body = max_body_bytes
        self._auth = auth
        self._audit = audit
        self._plans = codec.Plans()
        self._heads = codec.Heads()
        self.app = web.Application(client_max_size=max_body_bytes)
        self._runner: web.AppRunner | None = None
        #: The bound port (0 until started) and scheme.
        self.port = 0
        self.scheme = "http"
        for method, path, rpc, handler in self._routes():
            wrapped = self._guard(rpc, handler)
            for variant in (path, path.replace(_MODEL, _VERSION)) if _MODEL in path else (path,):
                self.app.router.add_route(method, variant, wrapped)
        # Last: what no route above takes. A route, not a middleware: with no middleware
        # aiohttp wraps no handler in per-request frames (its own and ours).
        self.app.router.add_route("*", "/{_path:.*}", self._miss)

    def _routes(self) -> list[tuple[str, str, str, Handler]]:
        """(HTTP method, path, the gRPC method whose scope it needs, handler); a path under
        ``/v2/models/{model}`` also answers under ``.../versions/{version}``."""
        return [  # infer first: aiohttp tries the routes under /v2/models in this order
            ("POST", _MODEL + "/infer", _GRPC + "ModelInfer", self._infer),
            ("GET", "/v2/health/live", "/grpc.health.v1.Health/Check", self._live),
            ("GET", "/v2/health/ready", "/grpc.health.v1.Health/Check", self._ready),
            ("GET", "/v2", _GRPC + "ServerMetadata", self._simple(
                "ServerMetadata", lambda r: pb.ServerMetadataRequest())),
            ("GET", "/v2/models/stats", _GRPC + "ModelStatistics", self._stats),
            ("GET", _MODEL + "/stats", _GRPC + "ModelStatistics", self._stats),
            ("GET", _MODEL + "/ready", _GRPC + "ModelReady", self._model_ready),
            ("GET", _MODEL + "/config", _GRPC + "ModelConfig", self._config),
            ("GET", _MODEL, _GRPC + "ModelMetadata", self._simple(
                "ModelMetadata", lambda r: pb.ModelMetadataRequest(**_model(r)))),
            ("POST", "/v2/repository/index", _GRPC + "RepositoryIndex", self._index),
            ("POST", "/v2/repository/models/{model}/load", _GRPC + "RepositoryModelLoad",
             self._load),
            ("POST", "/v2/repository/models/{model}/unload", _GRPC + "RepositoryModelUnload",
             self._unload),
        ]

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, host: str, port: int, *, tls: CertificateReloader | None = None,
                    reuse_port: bool = False, shutdown_timeout_s: float = 10.0) -> None:
        """Bind ``host:port`` (0: any free port) and serve; OSError when it cannot be bound."""
        sock = bind(host, port, reuse_port)
        try:
            context = None
            if tls is not None:
                context = Swapping(tls.material.http_context)
                tls.on_reload(context.swap)
                self.scheme = "https"
            runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                   shutdown_timeout=shutdown_timeout_s)
            await runner.setup()
            self._runner = runner
            await web.SockSite(runner, sock, ssl_context=context, backlog=1024).start()
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop listening; requests in flight get the shutdown timeout to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- access -------------------------------------------------------------------------------

    def _guard(self, rpc: str, handler: Handler) -> Handler:
        """``handler`` behind the scope check of ``rpc`` (none without ``--tokens``) and, for
        admin calls, an audit line per call."""
        auth, audit = self._auth, self._audit
        logged = audit is not None and audited(rpc)
        if auth is None and not logged:
            return handler

        async def guarded(request: web.Request) -> web.StreamResponse:
            peer = _peer(request)
            principal = "anonymous"
            model = request.match_info.get("model", "")
            if auth is not None:
                try:
                    principal = await auth.authorize(
                        request.headers.get("Authorization"), rpc, peer, _common_name(request),
                        model)
                except Refused as refused:
                    status, headers, message = http_error(refused.code, refused.message)
                    if refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        status, headers["Retry-After"] = 429, "1"  # a quota, not a size
                    return _error(status, headers, message)
            response = await handler(request)
            if logged:
                assert audit is not None
                ok = response.status < 400
                audit.record(principal=principal, peer=peer, method=rpc, model=model,
                             version=request.match_info.get("version", ""),
                             outcome="ok" if ok else "failed",
                             status="OK" if ok else str(response.status))
            return response
        return guarded

    # -- endpoints ----------------------------------------------------------------------------

    async def _miss(self, request: web.Request) -> web.Response:
        """A path no route serves (404), or one served for other methods (405, with Allow), as
        ``{"error": ...}`` like every other error (aiohttp writes them as plain text)."""
        allowed: set[str] = set()
        for resource in self.app.router.resources():
            if resource is not request.match_info.route.resource:
                allowed |= (await resource.resolve(request))[1]
        if not allowed:
            return _error(404, {}, f"no endpoint at '{request.path[:200]}'")
        listed = ", ".join(sorted(allowed))
        return _error(405, {"Allow": listed}, f"{request.method[:16]} is not allowed on "
                      f"'{request.path[:200]}' (allowed: {listed})")

    async def _rpc(self, name: str, message: Any) -> tuple[Any, _Call]:
        call = _Call()
        return await getattr(self._servicer, name)(message, call), call

    def _answer(self, reply: Any, call: _Call, render: Callable[[Any], Any]) -> web.Response:
        if call.code is not None:
            return _error(*http_error(call.code, call.details, call.trailers))
        return web.json_response(render(reply), dumps=_dumps)

    def _simple(self, name: str, build: Callable[[web.Request], Any]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            reply, call = await self._rpc(name, build(request))
            return self._answer(reply, call, to_json)
        return handle

    async def _live(self, request: web.Request) -> web.Response:
        reply, _ = await self._rpc("ServerLive", pb.ServerLiveRequest())
        return web.Response(status=200 if reply.live else 400)

    async def _ready(self, request: web.Request) -> web.Response:
        reply, _ = await self._rpc("ServerReady", pb.ServerReadyRequest())
        return web.Response(status=200 if reply.ready else 400)

    async def _model_ready(self, request: web.Request) -> web.Response:
        reply, _ = await self._rpc("ModelReady", pb.ModelReadyRequest(**_model(request)))
        return web.Response(status=200 if reply.ready else 400)

    async def _config(self, request: web.Request) -> web.Response:
        reply, call = await self._rpc("ModelConfig", pb.ModelConfigRequest(**_model(request)))
        return self._answer(reply, call, lambda r: to_json(r.config))

    async def _stats(self, request: web.Request) -> web.Response:
        match = request.match_info
        reply, call = await self._rpc("ModelStatistics", pb.ModelStatisticsRequest(
            name=match.get("model", ""), version=match.get("version", "")))
        response = self._answer(reply, call, to_json)
        for key, value in call.trailers:  # p50/p95/p99, as gRPC sends them in a trailer
            if call.code is None and key == "sluice-latency-quantiles":
                response.headers["Sluice-Latency-Quantiles"] = value
        return response

    async def _index(self, request: web.Request) -> web.Response:
        doc = await self._body_json(request)
        if isinstance(doc, web.Response):
            return doc
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            return _failure(InvalidInput("field 'ready' must be true or false"))
        reply, call = await self._rpc("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready))
        return self._answer(reply, call, lambda r: [to_json(m) for m in r.models])

    async def _load(self, request: web.Request) -> web.Response:
        doc = await self._body_json(request)
        if isinstance(doc, web.Response):
            return doc
        if doc.get("parameters"):
            return _failure(InvalidInput(
                f"parameters {sorted(doc['parameters'])} are not supported on load; edit the "
                "repository instead"))
        reply, call = await self._rpc("RepositoryModelLoad", pb.RepositoryModelLoadRequest(
            model_name=request.match_info["model"]))
        return self._answer(reply, call, lambda r: {})

    async def _unload(self, request: web.Request) -> web.Response:
        doc = await self._body_json(request)
        if isinstance(doc, web.Response):
            return doc
        reply, call = await self._rpc("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(
            model_name=request.match_info["model"]))
        return self._answer(reply, call, lambda r: {})

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """The request's body, or the 413 it gets (from Content-Length, before reading it)."""
        length = request.content_length
        if length is not None and length > self._max_body:
            return self._too_large(request, length)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked: counted as it came
            return self._too_large(request, None)

    def _too_large(self, request: web.Request, length: int | None) -> web.Response:
        self._servicer.refusals.counts["resource_exhausted"] += 1
        response = _error(413, {}, f"the request body ({length if length is not None else 'more'}"
                          f" bytes) exceeds the server's {self._max_body} bytes "
                          "(max_message_bytes)")
        response.force_close()  # the body is never read: the connection cannot be reused
        return response

    async def _body_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if not body.strip():
            return {}
        try:
            doc = codec.parse_json(body)
        except InvalidInput as exc:
            return _failure(exc)
        if not isinstance(doc, dict):
            return _failure(InvalidInput("the request must be a JSON object"))
        return doc

    async def _infer(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        servicer = self._servicer
        match = request.match_info
        model = match["model"]
        hub = servicer.hub
        watched = hub.wants(model)
        started = time.perf_counter() if watched else 0.0
        decoded = route = None
        try:
            try:
                plan = codec.decode_infer(body, request.headers.get(codec.HEADER_LENGTH), model,
                                          match.get("version", ""), self._limits, self._plans)
            except Exception as exc:
                servicer.refusals.note(exc)
                raise
            decoded, route, response = servicer.answer_decoded(
                plan.request, lambda: request.headers.get(STICKY_METADATA))
            if response is None:
                response = await servicer.dispatch(decoded, route)
            if watched:
                hub.offer(handoff.answered(decoded, route, response, started))
            answer, header_length = codec.encode_infer(response, plan, self._heads)
        except asyncio.CancelledError as exc:
            if watched:
                hub.offer(handoff.failed(pb.ModelInferRequest(model_name=model), decoded, route,
                                         started, exc, servicer.new_id))
            raise
        except Exception as exc:
            if watched:
                hub.offer(handoff.failed(pb.ModelInferRequest(model_name=model), decoded, route,
                                         started, exc, servicer.new_id))
            return _failure(exc)
        if header_length is None:
            return web.Response(body=answer, content_type="application/json")
        return web.Response(body=answer, content_type="application/octet-stream",
                            headers={codec.HEADER_LENGTH: str(header_length)})


def _model(request: web.Request) -> dict[str, str]:
    match = request.match_info
    return {"name": match["model"], "version": match.get("version", "")}


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"http:{peer[0]}:{peer[1]}" if peer else "http"


def _common_name(request: web.Request) -> str:
    """The common name of the client's mTLS certificate, or ""."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""
