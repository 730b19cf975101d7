"""``inference.GRPCInferenceService``: thin RPC methods over the model repository.

Each method decodes into our types, calls the core, encodes the reply. Errors go through
:func:`sluice.server.protocol.status.fail`, so every failure is one precise status whose message
names the offending thing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.server import __version__
from sluice.server.config.pbtxt import to_proto
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import (
    Code,
    InvalidInput,
    Overloaded,
    SluiceError,
    Unimplemented,
)
from sluice.server.monitoring.cost import CostAccountant
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.protocol import codec, handoff, shm_tensors
from sluice.server.protocol.extensions import EXTENSIONS
from sluice.server.protocol.model_control import load_arguments
from sluice.server.protocol.refusals import Refusals
from sluice.server.protocol.request_ids import id_maker
from sluice.server.protocol.request_layouts import RequestLayouts
from sluice.server.protocol.request_parsing import Unparsable
from sluice.server.protocol.shm_regions import SharedMemoryRegions
from sluice.server.protocol.shm_service import SystemSharedMemoryService
from sluice.server.protocol.statistics import latency_table, model_statistics
from sluice.server.protocol.status import fail
from sluice.server.protocol.streaming import answer_stream
from sluice.server.protocol.unimplemented import UnimplementedExtensions
from sluice.server.rollout.router import (
    ARM_PARAM,
    STICKY_METADATA,
    STICKY_PARAM,
    Router,
    ShadowTarget,
)
from sluice.server.serving import triton_texts
from sluice.server.serving.model import ModelVersion
from sluice.server.serving.repository import ModelRepository
from sluice.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

#: Failures that are the caller's doing: they say nothing about the arm, so arms do not count
#: them (a canary must not be rolled back for a client's malformed requests).
_CALLER_FAULTS = frozenset({Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED, Code.CANCELLED})
#: Where a request goes: (served version, arm or None on the plain path, shadow targets).
Routed = tuple[ModelVersion, str | None, tuple[ShadowTarget, ...]]


class InferenceServicer(
    SystemSharedMemoryService, UnimplementedExtensions, pb_grpc.GRPCInferenceServiceServicer
):
    """KServe v2 + Triton extensions over one :class:`ModelRepository`, routed by a
    :class:`Router` (one without persistence is made when none is given)."""

    #: Adds each version's cost to ModelStatistics' table (set by the composition root).
    cost: CostAccountant | None = None

    def __init__(
        self, repository: ModelRepository, *, router: Router | None = None,
        limits: RequestLimits | None = None, hub: MonitorHub | None = None,
        on_loaded: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """``hub``: where finished requests of watched models go (none is watched without);
        ``on_loaded(model)``: awaited after RepositoryModelLoad applied the deployment (the
        monitors' settings)."""
        self._on_loaded = on_loaded
        self._repo = repository
        self._router = router if router is not None else Router(repository, None)
        self._limits = limits or RequestLimits()
        #: Clients' system shared-memory regions (the app unmaps them at shutdown).
        self.shm = SharedMemoryRegions()
        self.hub = hub if hub is not None else MonitorHub()
        #: Requests refused before reaching a model (the composition root shares its own).
        self.refusals = Refusals()
        #: Makes the id of a request that came without one (unique across processes).
        self.new_id = id_maker()
        self._ready = False
        self._draining = False
        #: Inference requests admitted and not yet answered.
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.layouts = RequestLayouts()  # ModelInfer's deserializer (issue 11, request_layouts)

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new inference requests (UNAVAILABLE, reason draining) and wait up to
        ``timeout_s`` for the admitted ones to be answered. True when none is left."""
        self._ready = False
        self._draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- health and metadata ------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._ready)

    async def ModelReady(self, request, context):
        try:
            version = self._router.version_of(request.name, request.version)
        except SluiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._repo.ready(request.name, version))

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="sluice", version=__version__, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request, context):
        try:
            served = self._get(request.name, request.version)
        except SluiceError as exc:
            fail(context, exc)
            return pb.ModelMetadataResponse()
        config = served.config
        batch = (-1,) if config.max_batch_size > 0 else ()
        ready = [
            row.version for row in self._repo.index(ready_only=True) if row.name == config.name
        ]
        return pb.ModelMetadataResponse(
            name=config.name,
            versions=ready,
            platform=config.platform,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatype, shape=[*batch, *t.dims]
                )
                for t in config.inputs
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t.name, datatype=t.datatype, shape=[*batch, *t.dims]
                )
                for t in config.outputs
            ],
        )

    async def ModelConfig(self, request, context):
        try:
            served = self._get(request.name, request.version)
        except SluiceError as exc:
            fail(context, exc)
            return pb.ModelConfigResponse()
        message = to_proto(served.config)
        providers = getattr(served.backend, "providers", ())
        if providers:
            message.parameters["sluice.execution_providers"].string_value = ",".join(providers)
        if served.backend.notes:
            message.parameters["sluice.notes"].string_value = "; ".join(served.backend.notes)
        return pb.ModelConfigResponse(config=message)

    async def ModelStatistics(self, request, context):
        versions = self._select(request.name, request.version)
        if isinstance(versions, SluiceError):
            fail(context, versions)
            return pb.ModelStatisticsResponse()
        # p50/p95/p99 have no field in Triton's message: they travel as JSON in a header.
        table = latency_table(versions)
        if self.cost is not None:  # cost per prediction (issue 13 item 7)
            self.cost.annotate(table, versions)
        context.set_trailing_metadata((("sluice-latency-quantiles", json.dumps(table)),))
        return pb.ModelStatisticsResponse(model_stats=[model_statistics(v) for v in versions])

    def _get(self, name: str, version: str) -> ModelVersion:
        """The version a metadata RPC describes (``version`` may be an alias)."""
        return self._repo.get(name, self._router.version_of(name, version))

    def _select(self, name: str, version: str) -> list[ModelVersion] | SluiceError:
        loaded = self._repo.loaded()
        if not name:
            return loaded
        try:
            version = self._router.version_of(name, version)
        except SluiceError as exc:
            return exc
        chosen = [
            v for v in loaded if v.name == name and (not version or str(v.version) == version)
        ]
        if not chosen:
            detail = f"model '{name}'" + (f" version '{version}'" if version else "")
            return (triton_texts.unknown_version(name, version, detail + " is not loaded")
                    if version else triton_texts.unknown_model(name, detail + " is not loaded"))
        return chosen

    # -- inference ----------------------------------------------------------------------------

    def answer_now(
        self, message: pb.ModelInferRequest | InferRequest, deadline: float | None,
        metadata_key: Callable[[], str | None] | None = None,
    ) -> tuple[InferRequest, Routed, InferResponse | None]:
        """Decode (unless :attr:`layouts` did) and route ``message`` (refused while draining);
        answer it now when it can be, on the loop (plain path, model idle and fast enough to run
        inline), else None: :meth:`dispatch` it on the route with no await in between (a reload
        or switch never moves a request that chose its version). ``metadata_key`` gives the
        sticky key sent as gRPC metadata, called only when weights decide and none was sent."""
        if type(message) is InferRequest:
            message.deadline = deadline
            return self.answer_decoded(message, metadata_key)
        if self._draining:
            raise Overloaded("server is shutting down", reason="draining", retry_after_ms=1000)
        try:
            request = codec.decode_request(message, deadline, self._limits, self.shm)
        except Exception as exc:
            # As in Triton, the model is resolved before any tensor counts: an unknown model
            # is NOT_FOUND whatever its inputs (issue 16 item 6; only failures pay for this).
            missing = self._resolve_error(message)
            self.refusals.note(missing or exc)
            if missing is not None:
                raise missing from None
            raise
        self.layouts.learn(message, request)  # decoded: its layout may be cached
        return self.answer_decoded(request, metadata_key)

    def answer_decoded(
        self, request: InferRequest, metadata_key: Callable[[], str | None] | None = None,
    ) -> tuple[InferRequest, Routed, InferResponse | None]:
        """:meth:`answer_now` for a request another door decoded (REST)."""
        if self._draining:
            raise Overloaded("server is shutting down", reason="draining", retry_after_ms=1000)
        if not request.id:
            request.id = self.new_id()
        sticky = request.parameters.get(STICKY_PARAM) if request.parameters else None
        if sticky is not None and not isinstance(sticky, str):
            raise InvalidInput(f"parameter '{STICKY_PARAM}' must be a string")
        route = self._router.route(request.model_name, request.model_version, sticky, metadata_key)
        served, arm, shadows = route
        if request.shared_memory is not None and (shadows or self.hub.wants(request.model_name)):
            shm_tensors.retain(request)  # kept past the answer: not a view of client memory
        if arm is not None:
            return request, route, None
        try:
            return request, route, served.infer_now(request)
        except Exception as exc:
            handoff.note_route(exc, request, route)  # a failure's record names its version
            raise

    def _resolve_error(self, message: pb.ModelInferRequest) -> SluiceError | None:
        """Why ``message``'s model and version resolve to nothing, or None when they do."""
        try:
            self._router.route(message.model_name, message.model_version)
        except SluiceError as exc:
            return exc
        return None

    async def dispatch(self, request: InferRequest, route: Routed) -> InferResponse:
        """Infer ``request`` on ``route`` (from :meth:`answer_now`), counted as in flight."""
        self.in_flight += 1
        self._idle.clear()
        try:
            served, arm, shadows = route
            if arm is None:  # the plain path: no deployment, no alias named
                return await served.infer(request)
            return await self._infer_routed(request, served, arm, shadows)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def _infer_routed(
        self, request: InferRequest, served: ModelVersion, arm: str,
        shadows: tuple[ShadowTarget, ...],
    ) -> InferResponse:
        """Infer on ``served`` for ``arm``: mirror to shadows, count the arm, label the answer."""
        mirror = self._router.shadow
        token = (
            mirror.begin(request.model_name, served, request, shadows)
            if shadows and mirror is not None else None
        )
        started = time.perf_counter()
        try:
            response = await served.infer(request)
        except BaseException as exc:
            elapsed = time.perf_counter() - started
            if token is not None:
                mirror.finish(token, None, exc, elapsed)
            if not (isinstance(exc, SluiceError) and exc.code in _CALLER_FAULTS) and not (
                isinstance(exc, asyncio.CancelledError)
            ):
                self._router.record(request.model_name, arm, elapsed, False,
                                    version=served.version)
            raise
        elapsed = time.perf_counter() - started
        if token is not None:
            mirror.finish(token, response, None, elapsed)
        self._router.record(request.model_name, arm, elapsed, True, version=served.version)
        response.parameters[ARM_PARAM] = arm
        return response

    async def ModelInfer(self, request, context):
        if type(request) is Unparsable:  # the bytes did not parse (request_parsing)
            error = request.error()
            self.refusals.note(error)
            fail(context, error)
            return b""
        hub = self.hub
        watched = hub.wants(request.model_name)  # all a model nobody watches costs
        started = time.perf_counter() if watched else 0.0
        decoded = route = None
        try:
            decoded, route, response = self.answer_now(
                request, codec.deadline_from(context.time_remaining()),
                lambda: _metadata_sticky_key(context),
            )
            if response is None:
                response = await self.dispatch(decoded, route)
            if watched:
                hub.offer(handoff.answered(decoded, route, response, started))
            return shm_tensors.encode_response(decoded, response)
        except asyncio.CancelledError as exc:
            if watched:
                hub.offer(handoff.failed(request, decoded, route, started, exc, self.new_id))
            raise
        except Exception as exc:
            if watched:
                hub.offer(handoff.failed(request, decoded, route, started, exc, self.new_id))
            fail(context, exc)
            return b""  # the empty message, serialized (the status says what went wrong)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
    ) -> AsyncIterator[bytes | pb.ModelStreamInferResponse]:
        """Requests are answered as they finish (each response carries its request's id); an
        error answers that one request and the stream stays open (:mod:`.streaming`).
        """
        stream_key = _metadata_sticky_key(context)  # once per stream: metadata cannot change
        async for item in answer_stream(self, request_iterator, stream_key):
            yield item

    # -- repository ---------------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        if request.repository_name:
            fail(context, Unimplemented("named repositories are not supported"))
            return pb.RepositoryIndexResponse()
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=row.name, version=row.version, state=row.state, reason=row.reason
            )
            for row in self._repo.index(ready_only=request.ready)
        ])

    async def RepositoryModelLoad(self, request, context):
        try:
            if request.repository_name:
                raise Unimplemented("named repositories are not supported")
            # load-time overrides (issue 16 item 2): 'config' and 'file:<path>' parameters
            override, files = load_arguments(request) if request.parameters else (None, None)
            await self._repo.load(request.model_name, override, files)
            # Its deployment (persisted or deployment.yaml) applies once the versions are in.
            await self._router.model_loaded(request.model_name)
            if self._on_loaded is not None:
                await self._on_loaded(request.model_name)
        except SluiceError as exc:  # Triton's words first (issue 16 item 6)
            fail(context, triton_texts.failed_load(request.model_name, exc))
        except Exception as exc:
            fail(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            if request.repository_name:
                raise Unimplemented("named repositories are not supported")
            await self._repo.unload(request.model_name)
        except Exception as exc:
            fail(context, exc)
        return pb.RepositoryModelUnloadResponse()


def _metadata_sticky_key(context) -> str | None:
    """The sticky key sent as gRPC metadata ``x-sluice-sticky-key``, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == STICKY_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None
