"""Transport-free pieces shared by both clients: building requests, reading replies.

Plain functions over protobuf messages and numpy arrays; nothing here performs I/O, so the sync
and async clients differ only in how they call and sleep.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from sluice.clients.errors import InvalidInput, ServerError, SluiceClientError
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import tensors
from sluice.proto.params import ParameterValue, set_param

__all__ = [
    "LATENCY_KEY",
    "ParameterValue",
    "StreamResult",
    "build_request",
    "channel_options",
    "decode_response",
    "latency_from_trailers",
    "model_metadata_dict",
    "repository_index_list",
    "server_metadata_dict",
]

#: Trailer of ModelStatistics holding p50/p95/p99 per model, version and stage, as JSON.
LATENCY_KEY = "sluice-latency-quantiles"
#: Largest message either way (256 MiB): big batches of images exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024



@dataclass(frozen=True, slots=True)
class StreamResult:
    """One answer on a stream: the request at position ``index`` (0-based, in sending order)
    and either its ``outputs`` or its ``error`` (exactly one is not None).
    """

    index: int
    outputs: dict[str, np.ndarray] | None
    error: SluiceClientError | None


def channel_options(extra: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """Channel options with the message size limits raised; ``extra`` entries win."""
    options: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    }
    for key, value in extra or ():
        options[key] = value
    return list(options.items())


def _set_parameter(params: Any, key: str, value: ParameterValue) -> None:
    try:
        set_param(params, key, value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def build_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    version: str | None = None,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    parameters: Mapping[str, ParameterValue] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input as raw bytes (one copy of each array).

    ``outputs`` None asks for every output. Raises :class:`InvalidInput` (before anything is
    sent) for an array with no KServe datatype or an unsupported parameter type.
    """
    request = pb.ModelInferRequest(model_name=model, model_version=version or "", id=request_id)
    for name, value in inputs.items():
        try:
            tensor, raw = tensors.make_input(name, np.asarray(value))
        except tensors.TensorError as exc:
            raise InvalidInput(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)
    for output in outputs or ():
        request.outputs.add(name=output)
    for key, param in (parameters or {}).items():
        _set_parameter(request.parameters, key, param)
    return request


def decode_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs by name. Raw outputs decode zero-copy into read-only arrays (copy to modify).

    Raises :class:`ServerError` when the server sent malformed tensors.
    """
    try:
        return tensors.decode_outputs(response)
    except tensors.TensorError as exc:
        raise ServerError(grpc.StatusCode.INTERNAL, f"malformed response: {exc}") from None


def _tensor_list(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]


def model_metadata_dict(message: pb.ModelMetadataResponse) -> dict[str, Any]:
    """``{"name", "versions", "platform", "inputs", "outputs"}``; each tensor is
    ``{"name", "datatype", "shape"}`` with -1 for a variable dimension.
    """
    return {
        "name": message.name,
        "versions": list(message.versions),
        "platform": message.platform,
        "inputs": _tensor_list(message.inputs),
        "outputs": _tensor_list(message.outputs),
    }


def server_metadata_dict(message: pb.ServerMetadataResponse) -> dict[str, Any]:
    """``{"name", "version", "extensions"}``."""
    return {
        "name": message.name,
        "version": message.version,
        "extensions": list(message.extensions),
    }


def repository_index_list(message: pb.RepositoryIndexResponse) -> list[dict[str, str]]:
    """One ``{"name", "version", "state", "reason"}`` per model (version) in the repository."""
    return [
        {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
        for m in message.models
    ]


def latency_from_trailers(trailers: Iterable[Any] | None) -> dict[str, Any]:
    """The parsed ``sluice-latency-quantiles`` trailer: ``{model: {version: {"e2e" | "queue" |
    "compute" | "reject": {"p50", "p95", "p99"} in seconds or None, "requests": int,
    "window_s": float, "reject_buckets": [[upper bound, cumulative count], ...]}}}``.

    An empty dict when the server sent no such trailer (e.g. it is not Sluice); ServerError when
    the trailer is not JSON.
    """
    for key, value in trailers or ():
        if key == LATENCY_KEY:
            try:
                parsed: dict[str, Any] = json.loads(value)
            except ValueError as exc:
                raise ServerError(
                    grpc.StatusCode.INTERNAL, f"malformed {LATENCY_KEY} trailer: {exc}"
                ) from None
            return parsed
    return {}
