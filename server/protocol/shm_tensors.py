"""Tensors in system shared memory: inputs read from, outputs written into, the regions of
:mod:`.shm_regions`, as Triton's parameters ``shared_memory_region`` (string),
``shared_memory_byte_size`` (int) and ``shared_memory_offset`` (int, default 0) place them.

As in Triton, ``raw_input_contents`` holds one entry per input *not* in shared memory (in
order), and the response keeps one ``raw_output_contents`` entry per output, left empty for an
output written into a region (its name, datatype and shape are in the response as usual).

An input read from a region is a read-only numpy view of the mapping (no copy); the batcher's
gather copies it into the batch, or the backend reads it in place when it computes alone. A
request whose inputs outlive its answer (a monitor records it, a shadow replays it) gets its
own copy first (:func:`retain`): the client may rewrite the region once answered.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import tensors
from sluice.proto.params import param_value
from sluice.server.errors import InvalidInput
from sluice.server.protocol import wire
from sluice.server.protocol.shm_regions import SharedMemoryRegions
from sluice.server.types import InferRequest, InferResponse

REGION, OFFSET, SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"
_NONE: frozenset[str] = frozenset()


class SharedMemoryUse:
    """What of one request lives in shared memory (carried as ``InferRequest.shared_memory``):
    the inputs that are views of a region, and each shm output's slice."""

    __slots__ = ("inputs", "outputs")

    def __init__(self, inputs: tuple[str, ...], outputs: dict[str, memoryview]) -> None:
        self.inputs = inputs
        self.outputs = outputs


def placement(parameters: Any, label: str) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) the tensor's ``parameters`` name, None when it names none;
    InvalidInput for a half-given placement or a value of the wrong type."""
    if REGION not in parameters and SIZE not in parameters and OFFSET not in parameters:
        return None
    region = param_value(parameters[REGION]) if REGION in parameters else None
    size = param_value(parameters[SIZE]) if SIZE in parameters else None
    if region is None or size is None:
        raise InvalidInput(
            f"{label}: shared memory needs both '{REGION}' and '{SIZE}' (got "
            + ", ".join(repr(k) for k in (REGION, SIZE, OFFSET) if k in parameters) + ")"
        )
    offset = param_value(parameters[OFFSET]) if OFFSET in parameters else 0
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"{label}: parameter '{REGION}' must be a region name (a string)")
    for key, value in ((SIZE, size), (OFFSET, offset)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"{label}: parameter '{key}' must be an integer")
    return region, offset, size


def uses_shared_memory(items: Iterable[Any]) -> bool:
    """Whether any input or requested output of a message names a shared-memory placement."""
    return any(item.parameters and (REGION in item.parameters or SIZE in item.parameters
                                     or OFFSET in item.parameters) for item in items)


def decode_inputs(
    message: pb.ModelInferRequest, regions: SharedMemoryRegions
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Every input of ``message`` by name, and the names of those read from shared memory.
    Raw contents are matched, in order, to the inputs not in shared memory (as Triton)."""
    raws = message.raw_input_contents[:]
    decoded: dict[str, np.ndarray] = {}
    in_shm: list[str] = []
    next_raw = 0
    for tensor in message.inputs:
        name = tensor.name
        label = f"input '{name}'"
        if name in decoded:
            raise tensors.TensorError(f"{label}: appears more than once")
        contents = tensor.contents if tensor.HasField("contents") else None
        where = placement(tensor.parameters, label) if tensor.parameters else None
        if where is None:
            raw = None
            if raws:
                if next_raw >= len(raws):
                    raise tensors.TensorError(
                        f"{label}: no raw_input_contents entry left ({len(raws)} for the "
                        "inputs not in shared memory)")
                raw = raws[next_raw]
                next_raw += 1
            decoded[name] = tensors.decode_tensor(
                name, tensor.datatype, tensor.shape, raw, contents)
            continue
        if contents is not None and contents.ListFields():
            raise tensors.TensorError(f"{label}: has both shared memory and typed contents")
        region, offset, size = where
        view = regions.slice(region, offset, size, label)
        array = tensors.decode_tensor(name, tensor.datatype, tensor.shape, view, None)
        if array.dtype.kind != "O":
            array.flags.writeable = False  # a view of the client's memory: never written
        decoded[name] = array
        in_shm.append(name)
    if next_raw != len(raws):
        raise tensors.TensorError(
            f"{len(raws)} raw_input_contents entries for {next_raw} inputs not in shared "
            "memory; raw data needs exactly one entry per such input")
    return decoded, tuple(in_shm)


def output_slices(outputs: Iterable[Any], regions: SharedMemoryRegions) -> dict[str, memoryview]:
    """Each requested output placed in shared memory -> its slice (checked now, before any
    compute)."""
    slices = {}
    for output in outputs:
        label = f"output '{output.name}'"
        where = placement(output.parameters, label) if output.parameters else None
        if where is not None:
            slices[output.name] = regions.slice(*where, label)
    return slices


def retain(request: InferRequest) -> None:
    """Give ``request`` its own copies of the inputs it reads from shared memory (for a
    request a monitor or a shadow keeps past its answer)."""
    use = request.shared_memory
    if use is not None:
        for name in use.inputs:
            request.inputs[name] = request.inputs[name].copy()


def _write(name: str, array: np.ndarray, target: memoryview) -> None:
    """``array`` written at the start of ``target`` (raw layout: C order, little-endian,
    BYTES length-prefixed); InvalidInput when it does not fit."""
    if array.dtype.kind in "OSU" or array.dtype.byteorder == ">":
        data: Any = tensors.encode_raw(array, label=f"output '{name}'")
        needed = len(data)
    else:
        data = np.ascontiguousarray(array)
        needed = data.nbytes
    if needed > len(target):
        raise InvalidInput(
            f"shared memory size specified with the request for output '{name}' "
            f"({len(target)} bytes) should be at least {needed} bytes to hold the results"
        )
    if isinstance(data, bytes):
        target[:needed] = data
    else:
        np.frombuffer(target, np.uint8, needed)[:] = data.reshape(-1).view(np.uint8)


def written(request: InferRequest, response: InferResponse) -> frozenset[str]:
    """Write ``response``'s outputs placed in shared memory into their slices; their names
    (the response leaves their raw contents empty)."""
    use = request.shared_memory
    if use is None or not use.outputs:
        return _NONE
    names = []
    for name, target in use.outputs.items():
        array = response.outputs.get(name)
        if array is None:
            continue  # not produced: the model's own checks have said so
        _write(name, np.asarray(array), target)
        names.append(name)
    return frozenset(names)


def encode_response(request: InferRequest | None, response: InferResponse) -> bytes:
    """The ModelInferResponse bytes, shm outputs written to their regions first."""
    if request is None or request.shared_memory is None:
        return wire.encode_response(response)
    return wire.encode_response(response, written(request, response))


def encode_stream_response(request: InferRequest | None, response: InferResponse) -> bytes:
    """The ModelStreamInferResponse bytes, shm outputs written to their regions first."""
    if request is None or request.shared_memory is None:
        return wire.encode_stream_response(response)
    return wire.encode_stream_response(response, written(request, response))
