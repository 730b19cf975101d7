"""ModelInferResponse written straight to protobuf wire bytes, and the service registered to send
them as they are.

Building a ``ModelInferResponse`` message field by field from Python costs about as much as the
rest of a small model's request path (an ``outputs.add`` and an ``append`` per output, each a
trip through the protobuf runtime, then ``SerializeToString``). The response's shape is nearly
always the same for a model, so the bytes of each output's description (name, datatype, shape)
and of the model name and version are built once and cached; a response is then their
concatenation with the request id and the raw output bytes. What comes out parses to exactly
the message :func:`sluice.server.protocol.codec.encode_response` builds (the tests check that); a
parameters map, rare on the hot path, is serialized by protobuf itself and concatenated, which
protobuf defines as merging.

Wire format (protobuf encoding): a length-delimited field is ``tag`` ``varint(len)`` ``bytes``
with ``tag = field_number << 3 | 2``; ``repeated int64`` is packed (one length-delimited field
of varints); proto3 leaves empty strings and empty repeated fields out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Container, Mapping
from typing import Any

import grpc
import numpy as np

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto import tensors
from sluice.proto.params import set_param
from sluice.server.protocol.request_parsing import tolerant
from sluice.server.types import InferResponse

_SERVICE = "inference.GRPCInferenceService"
#: Tags (field number << 3 | 2, length-delimited) of the fields written here.
_NAME, _VERSION, _ID, _OUTPUT, _RAW = b"\x0a", b"\x12", b"\x1a", b"\x2a", b"\x32"
_STREAM_RESPONSE = b"\x12"  # ModelStreamInferResponse.infer_response
_TENSOR_NAME, _TENSOR_DATATYPE, _TENSOR_SHAPE = b"\x0a", b"\x12", b"\x1a"
_SMALL = [bytes([n]) for n in range(0x80)]
#: Byte orders whose data goes out as it is (raw data is little-endian).
_AS_IS = "<|=" if sys.byteorder == "little" else "<|"
#: Entries per cache before it starts again (bounds memory against clients sending many shapes).
_CACHE_LIMIT = 1024


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def _text(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode("utf-8")) if text else b""


_headers: dict[tuple[str, str], bytes] = {}
_outputs: dict[tuple[str, np.dtype[Any], tuple[int, ...]], tuple[bytes, str]] = {}


def _header(model_name: str, model_version: str) -> bytes:
    key = (model_name, model_version)
    cached = _headers.get(key)
    if cached is None:
        if len(_headers) >= _CACHE_LIMIT:
            _headers.clear()
        cached = _headers[key] = _text(_NAME, model_name) + _text(_VERSION, model_version)
    return cached


def _output(name: str, array: np.ndarray) -> tuple[bytes, str]:
    """The framed InferOutputTensor (name, datatype, shape) for ``array``, and its datatype."""
    key = (name, array.dtype, array.shape)
    cached = _outputs.get(key)
    if cached is None:
        datatype = tensors.dtype_to_datatype(array.dtype)
        body = _text(_TENSOR_NAME, name) + _text(_TENSOR_DATATYPE, datatype)
        if array.shape:
            body += _field(_TENSOR_SHAPE, b"".join(varint(d) for d in array.shape))
        if len(_outputs) >= _CACHE_LIMIT:
            _outputs.clear()
        cached = _outputs[key] = (_field(_OUTPUT, body), datatype)
    return cached


def _raw(array: np.ndarray, datatype: str, name: str) -> bytes:
    if datatype != "BYTES" and array.dtype.byteorder in _AS_IS:
        return array.tobytes()
    return tensors.encode_raw(array, label=f"output '{name}'")


def _parameters(parameters: Mapping[str, Any]) -> bytes:
    message = pb.ModelInferResponse()
    for key, value in parameters.items():
        set_param(message.parameters, key, value)
    return message.SerializeToString()


def encode_response(response: InferResponse, in_shm: Container[str] = ()) -> bytes:
    """The serialized ModelInferResponse: outputs as raw_output_contents, in the order of
    ``response.outputs``; those named in ``in_shm`` (written into shared memory) keep an empty
    entry, as Triton. Raises TensorError for an output with no KServe datatype."""
    parts = [_header(response.model_name, response.model_version)]
    if response.id:
        parts.append(_text(_ID, response.id))
    if response.parameters:
        parts.append(_parameters(response.parameters))
    raws = []
    for name, array in response.outputs.items():
        if type(array) is not np.ndarray:
            array = np.asarray(array)
        described, datatype = _output(name, array)
        parts.append(described)
        raw = _raw(array, datatype, name) if name not in in_shm else b""
        raws.append(_RAW + varint(len(raw)))
        raws.append(raw)
    return b"".join(parts + raws)


def encode_stream_response(response: InferResponse, in_shm: Container[str] = ()) -> bytes:
    """The serialized ModelStreamInferResponse carrying ``response`` (no error message)."""
    return _field(_STREAM_RESPONSE, encode_response(response, in_shm))


def _serialize(message: bytes | Any) -> bytes:
    """Bytes go out as they are; a message (an error's empty response) is serialized."""
    return message if type(message) is bytes else message.SerializeToString()


class _Capture:
    """Stands in for the server while the generated code lists its method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.handlers = dict(handlers)


def add_inference_service(servicer: pb_grpc.GRPCInferenceServiceServicer,
                          server: grpc.aio.Server) -> None:
    """Register the inference service like the generated ``add_..._to_server``, except that
    ModelInfer and ModelStreamInfer may answer with bytes already serialized, and take a
    request that does not parse as its :class:`~.request_parsing.Unparsable` marker (they
    answer it INVALID_ARGUMENT themselves: no wrapper on the hot path)."""
    capture = _Capture()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    handlers = capture.handlers
    make: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler,
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler,
    }
    parse = tolerant(pb.ModelInferRequest.FromString)
    for method, factory in make.items():
        handlers[method] = factory(
            getattr(servicer, method),
            # ModelInfer: repeated request layouts are decoded without protobuf (issue 11)
            request_deserializer=getattr(servicer, "layouts", parse) if method == "ModelInfer"
            else parse,
            response_serializer=_serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)
