"""Wire messages -> :mod:`server.types` (responses are written by :mod:`server.protocol.wire`).
Plain functions; no server state."""

from __future__ import annotations

import time

from proto import grpc_service_pb2 as pb
from proto import tensors
from proto.params import param_value
from server.config.settings import RequestLimits
from server.errors import InvalidInput, Unimplemented
from server.serving.admission import check_request_limits
from server.types import InferRequest

#: Request parameters Sluice understands; others are passed through to the core untouched.
_UNSUPPORTED_PARAMS = {
    "sequence_id": "sequence batching",
    "sequence_start": "sequence batching",
    "sequence_end": "sequence batching",
}


def decode_request(
    message: pb.ModelInferRequest, deadline: float | None, limits: RequestLimits | None = None
) -> InferRequest:
    """Decode a ModelInferRequest; TensorError / InvalidInput name the offending field.

    With ``limits``, a request with too many inputs, outputs or dimensions is refused with
    ResourceExhausted before any tensor is decoded.
    """
    if limits is not None:
        check_request_limits(
            limits, len(message.inputs), len(message.outputs),
            max((len(t.shape) for t in message.inputs), default=0),
        )
    parameters = {key: param_value(value) for key, value in message.parameters.items()}
    for key, feature in _UNSUPPORTED_PARAMS.items():
        if parameters.get(key):
            raise Unimplemented(f"parameter '{key}': {feature} is not supported by Sluice")
    priority = parameters.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise InvalidInput("parameter 'priority' must be a non-negative integer")
    requested = None
    if message.outputs:
        for output in message.outputs:
            if "classification" in output.parameters:
                raise Unimplemented(
                    f"output '{output.name}': the classification extension is not supported"
                )
            if "shared_memory_region" in output.parameters:
                raise Unimplemented(f"output '{output.name}': shared memory is not supported")
        requested = tuple(output.name for output in message.outputs)
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        inputs=tensors.decode_inputs(message),
        id=message.id,
        requested_outputs=requested,
        parameters=parameters,
        deadline=deadline,
        priority=priority,
    )


def deadline_from(time_remaining: float | None) -> float | None:
    """A monotonic deadline from gRPC's ``context.time_remaining()`` (None: no deadline)."""
    if time_remaining is None:
        return None
    return time.monotonic() + time_remaining
