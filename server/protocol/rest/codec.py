"""KServe v2 REST inference bodies <-> :mod:`sluice.server.types`: JSON tensors and Triton's
binary tensor data extension. Plain functions; no server state, no HTTP library.

A request body is a JSON object, or, with the ``Inference-Header-Content-Length: N`` header, N
bytes of JSON followed by the binary data of the inputs whose ``parameters`` carry
``binary_data_size`` (in the order of ``inputs``; BYTES elements each prefixed by their length as
4 little-endian bytes, every other datatype little-endian in row-major order, as gRPC's raw
contents). An output is returned as binary data when its entry in ``outputs`` has parameter
``binary_data: true``, or when the request parameter ``binary_data_output`` is true and the
output does not say otherwise; the response then has the same layout (its header length in the
same header) and such an output carries ``parameters.binary_data_size`` instead of ``data``.

Promises: every refusal is InvalidInput (or TensorError, ResourceExhausted, Unimplemented) naming
the field at fault, raised before any tensor is handed on; the size caps of
:class:`~sluice.server.config.settings.RequestLimits` are checked on what a tensor declares,
before its data is converted; a request that decodes carries exactly the arrays a gRPC request
with the same tensors decodes to (the binary section decodes through
:func:`sluice.proto.tensors.decode_tensor`, as gRPC's raw contents do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from sluice.proto import tensors
from sluice.proto.datatypes import DATATYPES, TensorError
from sluice.server.config.settings import RequestLimits
from sluice.server.errors import InvalidInput, Unimplemented
from sluice.server.protocol.codec import checked_parameters
from sluice.server.protocol.rest.heads import Heads
from sluice.server.protocol.rest.json_tensors import SCALARS, json_tensor
from sluice.server.protocol.rest.plans import Plans
from sluice.server.serving.budget import (
    check_element_bytes,
    check_parameters,
    check_request_limits,
    check_shape,
)
from sluice.server.types import InferRequest, InferResponse

#: The header giving the length of the JSON part of a body with binary data.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Request parameters of the REST codec itself, never passed on to the core.
_REST_PARAMS = ("binary_data_output",)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded request and how its answer is to be written."""

    request: InferRequest
    #: Output name -> binary data (True), JSON (False) or the default (None), for the outputs
    #: the request named.
    binary: dict[str, bool | None]
    #: For outputs it did not name: the request parameter ``binary_data_output``.
    binary_default: bool


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON part, binary part) of ``body``, given its ``Inference-Header-Content-Length``."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(
            f"header '{HEADER_LENGTH}' must be a byte count, got {header_length[:40]!r}"
        ) from None
    if length < 0 or length > len(body):
        raise InvalidInput(
            f"header '{HEADER_LENGTH}' ({length}) is past the end of the body ({len(body)} bytes)"
        )
    view = memoryview(body)
    return body[:length], view[length:]


def parse_json(text: bytes, what: str = "request") -> Any:
    """``text`` parsed as JSON; InvalidInput naming where it stops being JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (UnicodeDecodeError, RecursionError):
        raise InvalidInput(f"the {what} is not valid JSON (not UTF-8, or nested too deep)") \
            from None


def decode_infer(
    body: bytes, header_length: str | None, model: str, version: str,
    limits: RequestLimits | None, plans: Plans | None = None,
) -> Decoded:
    """Decode a POST to ``/v2/models/{model}[/versions/{version}]/infer``; with ``plans``, by
    the plan of its JSON part when there is one (:mod:`.plans`: the same outcome), and the plan
    of a binary-data body is kept there for the next one."""
    text, binary = split_body(body, header_length)
    if plans is not None:
        planned = plans.decode(text, binary, model, version, limits)
        if planned is not None:
            request, plan = planned
            return Decoded(request, plan.binary, plan.binary_default)
    doc = parse_json(text)
    if not isinstance(doc, dict):
        raise InvalidInput("the request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("field 'inputs' must be a list of tensors")
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidInput("field 'outputs' must be a list")
    if limits is not None:
        check_request_limits(limits, len(inputs), len(outputs), 0)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("field 'id' must be a string")
    parameters = _parameters(doc.get("parameters"), "request", limits)
    binary_default = parameters.pop("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInput("parameter 'binary_data_output' must be true or false")
    parameters = checked_parameters(parameters) if parameters else parameters
    decoded: dict[str, np.ndarray] = {}
    kinds: list[tuple[str, int | None]] = []  # (datatype, binary bytes or None) per input
    offset = 0
    for index, tensor in enumerate(inputs):
        name, array, used = _input(tensor, index, binary, offset, limits)
        if name in decoded:
            raise InvalidInput(f"input '{name}': appears more than once")
        decoded[name] = array
        kinds.append((tensor["datatype"], None if "data" in tensor else used))
        offset += used
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data follow the inputs' "
            f"binary_data_size ({offset} bytes announced)"
        )
    binary_of = _outputs(outputs, limits)
    request = InferRequest(
        model, version, decoded, request_id, tuple(binary_of) if outputs else None, parameters,
        None, parameters.get("priority", 0) if parameters else 0,
    )
    if plans is not None:
        plans.learn(text, request, kinds, binary_of, binary_default)
    return Decoded(request, binary_of, binary_default)


def _parameters(raw: Any, where: str, limits: RequestLimits | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} 'parameters' must be a JSON object")
    if limits is not None:
        check_parameters(limits, where, len(raw))
    for key, value in raw.items():
        if not isinstance(value, SCALARS):
            raise InvalidInput(
                f"{where} parameter '{key}' must be a boolean, number or string"
            )
    return dict(raw)


def _input(
    tensor: Any, index: int, binary: memoryview, offset: int, limits: RequestLimits | None
) -> tuple[str, np.ndarray, int]:
    """(name, array, binary bytes used) of the ``index``-th input."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise InvalidInput(f"inputs[{index}] must be an object with a string 'name'")
    name = tensor["name"]
    label = f"input '{name}'"
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"{label}: unknown datatype {str(datatype)[:20]!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape
    ):
        raise InvalidInput(f"{label}: 'shape' must be a list of non-negative integers")
    dims = tuple(shape)
    if limits is not None:
        if len(dims) > limits.max_rank:
            check_request_limits(limits, 0, 0, len(dims))
        check_shape(limits, name, dims)
    parameters = _parameters(tensor.get("parameters"), label, limits)
    if "shared_memory_region" in parameters:
        raise Unimplemented(f"{label}: shared memory is not supported")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidInput(f"{label}: 'binary_data_size' must be a non-negative integer")
        if "data" in tensor:
            raise InvalidInput(f"{label}: has both 'data' and binary_data_size")
        left = len(binary) - offset
        if size > left:
            raise InvalidInput(
                f"{label}: binary_data_size {size} runs past the end of the binary data "
                f"({left} bytes left)"
            )
        array = tensors.decode_tensor(
            name, datatype, dims, binary[offset:offset + size].tobytes(), None
        )
    else:
        if "data" not in tensor:
            raise InvalidInput(f"{label}: has neither 'data' nor binary_data_size")
        array = json_tensor(tensor["data"], datatype, dims, label)
    if datatype == "BYTES" and limits is not None:
        check_element_bytes(limits, name, array.ravel().tolist())
    return name, array, size or 0


def _outputs(outputs: list[Any], limits: RequestLimits | None) -> dict[str, bool | None]:
    binary: dict[str, bool | None] = {}
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        name = output["name"]
        parameters = _parameters(output.get("parameters"), f"output '{name}'", limits)
        if "classification" in parameters:
            raise Unimplemented(f"output '{name}': the classification extension is not supported")
        if "shared_memory_region" in parameters:
            raise Unimplemented(f"output '{name}': shared memory is not supported")
        flag = parameters.get("binary_data", None)
        if flag is not None and not isinstance(flag, bool):
            raise InvalidInput(f"output '{name}': 'binary_data' must be true or false")
        binary[name] = flag
    return binary


def encode_infer(response: InferResponse, decoded: Decoded, heads: Heads | None = None
                 ) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when no output is binary) of the answer to
    ``decoded``; with ``heads``, an answer of binary outputs only by its kept head (the same
    bytes, :mod:`.heads`). Raises TensorError for an output with no KServe datatype,
    InvalidInput for a BYTES output that is not UTF-8 asked for as JSON."""
    if heads is not None:
        answer = heads.encode(response, decoded.binary, decoded.binary_default)
        if answer is not None:
            return answer
    outputs = []
    raws = []
    for name, array in response.outputs.items():
        array = np.asarray(array)
        flag = decoded.binary.get(name)
        as_binary = decoded.binary_default if flag is None else flag
        datatype = tensors.dtype_to_datatype(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if as_binary:
            raw = tensors.encode_raw(array, label=f"output '{name}'")
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            entry["data"] = _json_values(array, datatype, name)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name,
                           "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not raws:
        return header, None
    return b"".join([header, *raws]), len(header)


def _json_values(array: np.ndarray, datatype: str, name: str) -> list[Any]:
    values = array.ravel().tolist()
    if datatype != "BYTES":
        return values
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output '{name}': holds bytes that are not UTF-8; ask for it with "
            "parameter binary_data: true"
        ) from None


__all__ = ["HEADER_LENGTH", "Decoded", "Heads", "Plans", "TensorError", "decode_infer",
           "encode_infer", "json_tensor", "parse_json", "split_body"]
