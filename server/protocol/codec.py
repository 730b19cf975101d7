"""Wire messages -> :mod:`sluice.server.types` (responses are written by
:mod:`sluice.server.protocol.wire`). Plain functions; no server state."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import tensors
from sluice.proto.datatypes import DATATYPES
from sluice.proto.params import param_value
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import InvalidInput, Unimplemented
from sluice.server.protocol import shm_tensors
from sluice.server.protocol.shm_regions import SharedMemoryRegions
from sluice.server.serving.budget import (
    check_element_bytes,
    check_parameters,
    check_request_limits,
    check_shape,
)
from sluice.server.serving.sequences import sequence_params
from sluice.server.types import InferRequest

#: Request parameters Sluice refuses (feature -> why); others are passed to the core untouched.
_UNSUPPORTED_PARAMS: dict[str, str] = {}
#: Sequence batching's parameters: their types are checked on every model, as Triton's frontend
#: does; a model without sequence_batching then ignores them, as Triton's schedulers do.
_SEQUENCE_PARAMS = ("sequence_id", "sequence_start", "sequence_end")

#: Request parameters named like these name a file or directory: refused, whatever the value.
_FILE_PARAM_SUFFIXES = ("file", "filename", "path", "dir", "directory")

#: (datatype, shape) -> (dtype, byte length, extent) of raw inputs that decoded once the general
#: way: a request whose every input matches one is decoded without checking each rule again.
#: The extent (the larger of the element count and the largest dimension) is what
#: max_tensor_elements caps: the plans are shared by every server in the process.
_raw_plans: dict[tuple[str, tuple[int, ...]], tuple[np.dtype[Any], int, int]] = {}
#: The element cap of a decode without limits.
_NO_CAP = 1 << 62
#: Entries before the plans start again (bounds memory against clients sending many shapes).
_PLAN_LIMIT = 1024
#: Datatypes whose raw data needs no check beyond its length (BOOL and BYTES do).
_PLAIN_RAW = frozenset(DATATYPES) - {"BOOL", "BYTES"}


def decode_request(
    message: pb.ModelInferRequest, deadline: float | None, limits: RequestLimits | None = None,
    shm: SharedMemoryRegions | None = None,
) -> InferRequest:
    """Decode a ModelInferRequest; TensorError / InvalidInput name the offending field.

    With ``limits``, a request with too many inputs, outputs, dimensions, elements or
    parameters is refused with ResourceExhausted before any tensor is decoded (a BYTES element
    too long, as it is decoded). Raw inputs of a (datatype, shape) already
    decoded once take a short path (:data:`_raw_plans`): the same arrays, fewer checks; the
    request then carries its ``signature`` for the model's own checks to cache on. With
    ``shm``, tensors may be placed in its shared-memory regions (:mod:`.shm_tensors`).
    """
    inputs = message.inputs[:]  # a list: indexing and iterating the field itself is slower
    n_outputs = len(message.outputs)
    if limits is not None and (len(inputs) > limits.max_inputs or n_outputs > limits.max_outputs):
        check_request_limits(limits, len(inputs), n_outputs, 0)
    shapes = [tuple(tensor.shape[:]) for tensor in inputs]
    if limits is not None:
        for shape in shapes:  # (a loop: max(map(len, ...)) costs more for one or two inputs)
            if len(shape) > limits.max_rank:
                check_request_limits(limits, 0, 0, max(map(len, shapes)))
    parameters = _parameters(message.parameters, limits) if message.parameters else {}
    requested, classes = (
        _requested_outputs(message.outputs, limits, shm) if n_outputs else (None, None)
    )
    raws = message.raw_input_contents[:]
    in_shm: tuple[str, ...] = ()
    planned = _planned(
        inputs, shapes, raws, limits.max_elements if limits is not None else _NO_CAP
    )
    if planned is None:
        signature = None
        if limits is not None:
            _check_sizes(inputs, shapes, limits)
        if raws:
            _check_one_form(inputs, message.model_name)
        if shm is not None and shm_tensors.uses_shared_memory(inputs):
            decoded, in_shm = shm_tensors.decode_inputs(message, shm)
        else:
            decoded = tensors.decode_inputs(message)
        if limits is not None:
            _check_bytes(inputs, decoded, limits)
        if not in_shm:
            _learn(inputs, shapes, raws, decoded)
    else:
        signature, decoded = planned
    shared_memory = None
    if shm is not None and (in_shm or n_outputs):  # system shared memory (issue 16 item 4)
        placed = shm_tensors.output_slices(message.outputs, shm) if n_outputs else {}
        if in_shm or placed:
            shared_memory = shm_tensors.SharedMemoryUse(in_shm, placed)
    return InferRequest(
        message.model_name, message.model_version, decoded, message.id, requested, parameters,
        deadline, parameters.get("priority", 0) if parameters else 0, signature, shared_memory,
        classes,
    )


def _parameters(params: Any, limits: RequestLimits | None) -> dict[str, Any]:
    if limits is not None:
        check_parameters(limits, "request", len(params))
    return checked_parameters({key: param_value(value) for key, value in params.items()})


def checked_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` (a request's, as Python values, from any transport) once the rules every
    request obeys pass: no file names, no unsupported feature, a non-negative priority."""
    for key in parameters:  # hardened input: peers took log and trace files from requests
        if key.lower().endswith(_FILE_PARAM_SUFFIXES):
            raise InvalidInput(
                f"parameter '{key}': Sluice takes no file or directory names from requests"
            )
    for key, feature in _UNSUPPORTED_PARAMS.items():
        if parameters.get(key):
            raise Unimplemented(f"parameter '{key}': {feature} is not supported by Sluice")
    if any(key in parameters for key in _SEQUENCE_PARAMS):
        sequence_params(parameters)
    priority = parameters.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise InvalidInput("parameter 'priority' must be a non-negative integer")
    return parameters


def _requested_outputs(
    outputs: Any, limits: RequestLimits | None, shm: SharedMemoryRegions | None = None
) -> tuple[tuple[str, ...], dict[str, int] | None]:
    """The requested output names, and the class count of each asked for as classes."""
    classes = None
    for output in outputs:
        if limits is not None and output.parameters:
            check_parameters(limits, f"output '{output.name}'", len(output.parameters))
        if "classification" in output.parameters:  # Triton's extension (issue 16 item 3)
            count = param_value(output.parameters["classification"])
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise InvalidInput(
                    f"output '{output.name}': parameter 'classification' must be a positive "
                    "integer (the number of classes)"
                )
            classes = {**(classes or {}), output.name: count}
        if shm is None and "shared_memory_region" in output.parameters:
            raise Unimplemented(f"output '{output.name}': shared memory is not supported")
    return tuple(output.name for output in outputs), classes


def _planned(
    inputs: list[Any], shapes: list[tuple[int, ...]], raws: list[bytes], max_elements: int
) -> tuple[tuple[tuple[str, str, tuple[int, ...]], ...], dict[str, np.ndarray]] | None:
    """The signature, (name, datatype, shape) per input, and the decoded inputs when every
    input is plain raw data of a known plan with the plan's length and an extent within
    ``max_elements`` (and no parameters, no contents, no repeated name); else None."""
    if not raws or len(raws) != len(inputs):
        return None
    signature = []
    decoded = {}
    for tensor, shape, raw in zip(inputs, shapes, raws, strict=True):
        datatype = tensor.datatype
        plan = _raw_plans.get((datatype, shape))
        if plan is None or len(raw) != plan[1] or plan[2] > max_elements or (
            tensor.parameters or tensor.HasField("contents")
        ):
            return None
        name = tensor.name
        signature.append((name, datatype, shape))
        decoded[name] = np.frombuffer(raw, plan[0]).reshape(shape)
    if len(decoded) != len(signature):  # a repeated name: the general path says which
        return None
    return tuple(signature), decoded


def _learn(
    inputs: list[Any], shapes: list[tuple[int, ...]], raws: list[bytes],
    decoded: dict[str, np.ndarray],
) -> None:
    """Remember the plans of the raw inputs the general decoder just accepted."""
    if not raws:
        return
    for tensor, shape, raw in zip(inputs, shapes, raws, strict=True):
        if tensor.datatype in _PLAIN_RAW:
            if len(_raw_plans) >= _PLAN_LIMIT:
                _raw_plans.clear()
            array = decoded[tensor.name]
            extent = max(array.size, max(shape, default=0))
            _raw_plans[tensor.datatype, shape] = (array.dtype, len(raw), extent)


def _check_one_form(inputs: list[Any], model: str) -> None:
    """Raw contents exclude typed contents on every input, in Triton's words (issue 16)."""
    for tensor in inputs:
        if tensor.HasField("contents") and tensor.contents.ListFields():
            raise tensors.TensorError(
                "contents field must not be specified when using raw_input_contents for "
                f"'{tensor.name}' for model '{model}'"
            )


def _check_sizes(inputs: list[Any], shapes: list[tuple[int, ...]], limits: RequestLimits) -> None:
    """The element and parameter caps of each input, on what it declares (nothing decoded)."""
    for tensor, shape in zip(inputs, shapes, strict=True):
        check_shape(limits, tensor.name, shape)
        if tensor.parameters:
            check_parameters(limits, f"input '{tensor.name}'", len(tensor.parameters))


def _check_bytes(inputs: list[Any], decoded: dict[str, np.ndarray], limits: RequestLimits) -> None:
    """The BYTES element cap of each BYTES input (decoded: its elements are bytes)."""
    for tensor in inputs:
        if tensor.datatype == "BYTES":
            check_element_bytes(limits, tensor.name, decoded[tensor.name].ravel().tolist())


def deadline_from(time_remaining: float | None) -> float | None:
    """A monotonic deadline from gRPC's ``context.time_remaining()`` (None: no deadline)."""
    if time_remaining is None:
        return None
    return time.monotonic() + time_remaining
