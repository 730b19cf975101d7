"""Synchronous Sluice client over one blocking gRPC channel (no asyncio inside).

    with Client("127.0.0.1:8001", timeout=1.0) as client:
        outputs = client.infer("identity", {"INPUT0": np.ones((4, 16), np.float32)})

Thread-safe: one client (one channel) may serve many threads, which is how load generators
should use it. Every method raises a :class:`~sluice.clients.errors.SluiceClientError` subclass on
failure. Works against any KServe v2 / Triton gRPC server; :meth:`Client.latency` needs Sluice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from sluice.clients.auth import with_token
from sluice.clients.errors import error_from_rpc
from sluice.clients.messages import (
    ParameterValue,
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
from sluice.clients.tls import open_channel
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto import model_config_pb2

__all__ = ["Client"]


class Client:
    """Blocking client for one server, or for several replicas of it.

    ``target``: ``host:port``, any gRPC target (``dns:///name:port``: every address the name
    resolves to), or a list of ``IP:PORT`` replicas; calls go round-robin over the ready
    replicas and a retry goes to the next one (:mod:`sluice.clients.replicas`).
    ``health_check``: send only to replicas whose grpc.health.v1 status is SERVING (None: on
    when the target names several replicas, a list or a ``dns:`` name; off for one address).

    ``timeout`` (seconds, None: none) is the default deadline of every call; a per-call
    ``timeout`` replaces it. For inference it covers every attempt and every backoff wait.
    ``retries``, ``backoff_base_s``, ``backoff_max_s`` and ``retry_budget`` configure the
    :class:`~sluice.clients.retry.RetryPolicy` (only inference is retried, only on UNAVAILABLE).
    ``channel_options`` are extra gRPC channel arguments (message limits default to 256 MiB).
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
        self.timeout = timeout
        self.policy = RetryPolicy(retries, backoff_base_s, backoff_max_s, retry_budget,
                                  spread=spreads(target))
        self._channel = with_token(  # authz: the bearer token on every call
            open_channel(self.target, make_channel_options(
                [*balancing_options(target, health_check), *(channel_options or ())]),
                credentials), token)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; calls in flight on other threads fail with CANCELLED."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        """One attempt; failures mapped to SluiceClientError."""
        try:
            return method(request, timeout=self._timeout(timeout))
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

    def infer_request(
        self, request: pb.ModelInferRequest, *, timeout: float | None = None
    ) -> pb.ModelInferResponse:
        """Send a prepared request, retrying UNAVAILABLE per the policy; the raw response.

        ``timeout`` (seconds) bounds all attempts and waits together. Raises Overloaded when
        retries, the retry budget or the deadline run out, carrying the last pushback.
        """
        call = self.policy.begin(self._timeout(timeout))
        while True:
            try:
                response: pb.ModelInferResponse = self._stub.ModelInfer(
                    request, timeout=call.time_left()
                )
                return response
            except grpc.RpcError as exc:
                wait = call.after_failure(error_from_rpc(exc))
            time.sleep(wait)

    def infer(
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
        return decode_response(self.infer_request(request, timeout=timeout))

    # -- health and metadata ------------------------------------------------------------------

    def server_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server process is up."""
        return bool(self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout).live)

    def server_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server accepts inference requests."""
        return bool(self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout).ready)

    def model_ready(self, model: str, version: str = "", *, timeout: float | None = None) -> bool:
        """Whether ``model`` (``version``; "" for the default) is loaded and serving."""
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool(self._call(self._stub.ModelReady, request, timeout).ready)

    def server_metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"name", "version", "extensions"}``."""
        reply = self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(), timeout)
        return server_metadata_dict(reply)

    def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> dict[str, Any]:
        """``{"name", "versions", "platform", "inputs", "outputs"}`` (tensor shapes with -1)."""
        request = pb.ModelMetadataRequest(name=model, version=version)
        return model_metadata_dict(self._call(self._stub.ModelMetadata, request, timeout))

    def model_config(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        """Triton's ModelConfig message for the model."""
        request = pb.ModelConfigRequest(name=model, version=version)
        config: model_config_pb2.ModelConfig = self._call(
            self._stub.ModelConfig, request, timeout
        ).config
        return config

    def statistics(
        self, model: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Triton's cumulative statistics ("" model: every loaded model)."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        response: pb.ModelStatisticsResponse = self._call(
            self._stub.ModelStatistics, request, timeout
        )
        return response

    def latency(self, model: str = "", *, timeout: float | None = None) -> dict[str, Any]:
        """p50/p95/p99 in seconds per model, version and stage over the server's window; see
        :func:`sluice.clients.messages.latency_from_trailers` for the layout ({} if not Sluice).
        """
        request = pb.ModelStatisticsRequest(name=model)
        try:
            _, call = self._stub.ModelStatistics.with_call(request, timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return latency_from_trailers(call.trailing_metadata())

    # -- repository ---------------------------------------------------------------------------

    def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[dict[str, str]]:
        """Every model version the repository knows: ``{"name", "version", "state", "reason"}``."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return repository_index_list(self._call(self._stub.RepositoryIndex, request, timeout))

    def load_model(self, model: str, *, timeout: float | None = None) -> None:
        """Load (or reload) ``model`` from the repository; returns once it is serving."""
        request = pb.RepositoryModelLoadRequest(model_name=model)
        self._call(self._stub.RepositoryModelLoad, request, timeout)

    def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        """Unload every version of ``model``."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        self._call(self._stub.RepositoryModelUnload, request, timeout)
