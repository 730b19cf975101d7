# ASYNC109 asks for asyncio.timeout instead of timeout parameters; ours become the gRPC deadline,
# which the server sees and uses for admission, so they must stay parameters.
# ruff: noqa: ASYNC109
"""asyncio Sluice client over one reused ``grpc.aio`` channel.

    async with AsyncClient("127.0.0.1:8001", timeout=1.0) as client:
        outputs = await client.infer("identity", {"INPUT0": np.ones((4, 16), np.float32)})

The channel is created on first use, inside the running event loop, and belongs to that loop:
use one AsyncClient per loop. Cancelling a task awaiting a method cancels the RPC in flight (or
the backoff wait) and raises CancelledError; nothing is retried after that. Every method raises
a :class:`~sluice.clients.errors.SluiceClientError` subclass on failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from sluice.clients.auth import resolve_token, token_stub
from sluice.clients.errors import error_from_rpc
from sluice.clients.messages import (
    ParameterValue,
    StreamResult,
    build_request,
    decode_response,
    latency_from_trailers,
    model_metadata_dict,
    repository_index_list,
    server_metadata_dict,
)
from sluice.clients.messages import channel_options as make_channel_options
from sluice.clients.replicas import balancing_options, grpc_target, spreads
from sluice.clients.retry import RetryBudget, RetryPolicy
from sluice.clients.streaming import run_stream
from sluice.clients.tls import open_aio_channel
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto import model_config_pb2

__all__ = ["AsyncClient"]


class AsyncClient:
    """Non-blocking client for one server or several replicas of it (``target`` and
    ``health_check`` as for :class:`~clients.Client`); safe to share between tasks of one loop.

    Arguments as for :class:`~clients.Client`: ``timeout`` (seconds, None: none) is the default
    deadline of every call and, for inference, covers every attempt and backoff wait.
    ``credentials``: TLS (:func:`~sluice.clients.tls.tls_credentials`); None: plaintext.
    ``token``: bearer token for a server with ``--tokens`` (None: ``$SLUICE_TOKEN`` if set).
    """

    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:8001",
        *,
        timeout: float | None = None,
        retries: int = 3,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        retry_budget: RetryBudget | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        health_check: bool | None = None,
    ) -> None:
        self.target = grpc_target(target)  # replicas: a list becomes one balanced target
        self._token = resolve_token(token)  # authz: sent with every call (per-call metadata)
        self.timeout = timeout
        self.policy = RetryPolicy(retries, backoff_base_s, backoff_max_s, retry_budget,
                                  spread=spreads(target))
        self._options = make_channel_options(
            [*balancing_options(target, health_check), *(channel_options or ())])
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub_instance: Any = None  # the stub, wrapped to send the token

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def _stub(self) -> Any:
        if self._stub_instance is None:
            self._channel = open_aio_channel(self.target, self._options, self._credentials)
            self._stub_instance = token_stub(pb_grpc.GRPCInferenceServiceStub(self._channel),
                                             self._token, reuse_metadata=True)
        return self._stub_instance

    async def close(self) -> None:
        """Close the channel; calls still in flight end with CANCELLED. Idempotent."""
        channel, self._channel, self._stub_instance = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        """One attempt; failures mapped to SluiceClientError."""
        try:
            return await method(request, timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    # -- inference ----------------------------------------------------------------------------

    def build_request(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> pb.ModelInferRequest:
        """Encode a request once (raw tensors) to send many times with :meth:`infer_request`."""
        return build_request(
            model,
            inputs,
            version=version,
            outputs=outputs,
            request_id=request_id,
            parameters=parameters,
        )

    async def infer_request(
        self, request: pb.ModelInferRequest, *, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        """Send a prepared request, retrying UNAVAILABLE per the policy; the raw response.

        ``timeout`` (seconds) bounds all attempts and waits together. Raises Overloaded when
        retries, the retry budget or the deadline run out, carrying the last pushback.
        """
        call = self.policy.begin(self._timeout(timeout))
        while True:
            try:
                response: pb.ModelInferResponse = await self._stub.ModelInfer(
                    request, timeout=call.time_left()
                )
                return response
            except grpc.RpcError as exc:
                wait = call.after_failure(error_from_rpc(exc))
            await asyncio.sleep(wait)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
        request_id: str = "",
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` ({name: array}); the outputs by name.

        ``outputs`` limits the reply to those names (None: all). Outputs are read-only arrays
        over the response bytes. See :meth:`infer_request` for timeout and retries.
        """
        request = self.build_request(
            model,
            inputs,
            version=version,
            outputs=outputs,
            request_id=request_id,
            parameters=parameters,
        )
        return decode_response(await self.infer_request(request, timeout=timeout))

    def stream(
        self,
        model: str,
        requests: Iterable[Mapping[str, np.ndarray]] | AsyncIterable[Mapping[str, np.ndarray]],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult]:
        """Send every request over one ModelStreamInfer call (ids "0", "1", ... in order) and
        yield one :class:`StreamResult` per request as answers arrive, in any order; end once
        every request is answered.

        A request that fails (on the server, or locally when it cannot be encoded) yields a
        result with ``error`` set; the others go on. Nothing is retried. ``timeout`` (seconds)
        bounds the whole call. Leaving the loop early cancels the call (wrap the iterator in
        ``contextlib.aclosing`` to do so at once rather than at garbage collection).
        """

        def build(inputs: Mapping[str, np.ndarray], request_id: str) -> pb.ModelInferRequest:
            return build_request(
                model, inputs, version=version, outputs=outputs, request_id=request_id
            )

        deadline = self._timeout(timeout)
        return run_stream(lambda: self._stub.ModelStreamInfer(timeout=deadline), requests, build)

    # -- health and metadata ------------------------------------------------------------------

    async def server_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server process is up."""
        reply = await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)
        return bool(reply.live)

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server accepts inference requests."""
        reply = await self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout)
        return bool(reply.ready)

    async def model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool:
        """Whether ``model`` (``version``; "" for the default) is loaded and serving."""
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool((await self._call(self._stub.ModelReady, request, timeout)).ready)

    async def server_metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"name", "version", "extensions"}``."""
        reply = await self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(), timeout)
        return server_metadata_dict(reply)

    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``{"name", "versions", "platform", "inputs", "outputs"}`` (tensor shapes with -1)."""
        request = pb.ModelMetadataRequest(name=model, version=version)
        return model_metadata_dict(await self._call(self._stub.ModelMetadata, request, timeout))

    async def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        """Triton's ModelConfig message for the model."""
        request = pb.ModelConfigRequest(name=model, version=version)
        reply = await self._call(self._stub.ModelConfig, request, timeout)
        config: model_config_pb2.ModelConfig = reply.config
        return config

    async def statistics(
        self, model: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Triton's cumulative statistics ("" model: every loaded model)."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        response: pb.ModelStatisticsResponse = await self._call(
            self._stub.ModelStatistics, request, timeout
        )
        return response

    async def latency(self, model: str = "", *, timeout: float | None = None) -> dict[str, Any]:
        """p50/p95/p99 in seconds per model, version and stage over the server's window; see
        :func:`sluice.clients.messages.latency_from_trailers` for the layout ({} if not Sluice).
        """
        request = pb.ModelStatisticsRequest(name=model)
        try:
            call = self._stub.ModelStatistics(request, timeout=self._timeout(timeout))
            await call
            trailers = await call.trailing_metadata()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return latency_from_trailers(trailers)

    # -- repository ---------------------------------------------------------------------------

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[dict[str, str]]:
        """Every model version the repository knows: ``{"name", "version", "state", "reason"}``."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        reply = await self._call(self._stub.RepositoryIndex, request, timeout)
        return repository_index_list(reply)

    async def load_model(self, model: str, *, timeout: float | None = None) -> None:
        """Load (or reload) ``model`` from the repository; returns once it is serving."""
        request = pb.RepositoryModelLoadRequest(model_name=model)
        await self._call(self._stub.RepositoryModelLoad, request, timeout)

    async def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        """Unload every version of ``model``."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        await self._call(self._stub.RepositoryModelUnload, request, timeout)
