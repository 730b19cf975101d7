"""ModelInfer requests of a layout seen before, decoded from their bytes without protobuf.

Load generators and services send the same request again and again: the same model, version,
input names, datatypes and shapes, parameters and requested outputs; only the id and the raw
tensor bytes differ. Parsing such a request with ``ModelInferRequest.FromString`` and decoding
it with :func:`~sluice.server.protocol.codec.decode_request` is the same work each time: a hit
here saves ~19-23 us of the loop's CPU per batch-1 request on the loaded 2-core development
box (``loadtests.inline_cost --against``, medians of 3 interleaved rounds, two runs:
identity 138 -> 114 and 151 -> 123 us, mlp 149 -> 127 and 153 -> 132, cnn28 199 -> 171 and
217 -> 199).

:class:`RequestLayouts` is ModelInfer's request deserializer. It walks the few top-level fields
of the bytes (tag, length; nothing nested is read) and, when they come in protobuf's own order
(model name, version, id, parameters, inputs, outputs, raw contents), cuts out the id and the
raw contents: what is left, compared byte for byte, is the request's **layout**. A layout seen a
second time and decoded the normal way (:meth:`learn`, called after the normal decode succeeded
on it) is cached with what that decode made of it; a request of a cached layout then becomes its
:class:`~sluice.server.types.InferRequest` directly: the id decoded from its bytes, each input a
``np.frombuffer`` view of its raw contents in the request's own bytes (copied only where the
view would be misaligned for its dtype).

Promises (tests/unit/test_request_layouts.py holds them against protobuf's own parsing):

- a hit makes the same model, version, id, inputs (names, dtypes, shapes, values, order),
  requested outputs, classification, parameters, priority and signature as the normal path;
- anything else takes the normal path, byte for byte as before (the same message, the same
  errors): fields out of order, unknown or repeated top-level fields, no raw contents, raw
  contents of another count or length than the layout's, an id that is not UTF-8, a layout
  not learned. Only layouts seen twice, at most 4 KiB long, that the normal path decoded
  without error, without shared memory and with plain raw datatypes (not BOOL, not BYTES) are
  learned: requests that all differ (e.g. by a per-request parameter) never churn the cache,
  and after 256 misses in a row only one request in 16 is scanned (~2-3 us a scan) until the
  next hit;
- the cache holds at most ``capacity`` layouts (the oldest learned goes first); ``hits`` and
  ``misses`` count lookups (``sluice_request_layout_lookups_total{result}``).

Why the order rule is enough: with fields in ascending order and at most one id, the layout is
itself a valid message of fields 1, 2, 4, 5, 6, and the request is that message with the id
spliced in and the raw contents appended; protobuf parses a message field by field, so equal
layouts parse to equal fields, and the raw contents alone decide the arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto.datatypes import DATATYPES
from sluice.server.protocol.request_parsing import tolerant
from sluice.server.protocol.wire import varint
from sluice.server.types import InferRequest

#: Layouts kept before the oldest is dropped (clients with many batch sizes make many).
CAPACITY = 64
#: Layouts seen once remembered (by hash) before that memory starts again: a layout is learned
#: when seen a second time, so traffic whose every request differs (a per-request parameter)
#: never churns the cache.
_SEEN_LIMIT = 1024
#: Misses in a row after which only one request in _COLD_SAMPLE is scanned (traffic of layouts
#: that never repeat pays ~1/16 of a scan; a layout that starts repeating is still learned).
_COLD_AFTER, _COLD_SAMPLE = 256, 16
#: Longest layout learned, in bytes (large parameters: the normal path, no copies kept).
_KEY_LIMIT = 4096
#: ModelInferRequest's top-level field numbers: id (cut out), raw_input_contents (the payloads).
_ID, _RAW = 3, 7
_ID_TAG = b"\x1a"
#: Raw datatypes a layout may hold: their arrays are the raw bytes as they are.
_PLAIN = frozenset(DATATYPES) - {"BOOL", "BYTES"}
_ndarray = np.ndarray
#: What the cache holds for a layout never seen (a layout learned as not cacheable holds None).
_UNSEEN: Any = object()


class _Layout:
    """What the normal decode made of one layout, shared by its hits and never changed."""

    __slots__ = ("classes", "middle", "model_name", "model_version", "parameters", "prefix",
                 "priority", "raws", "requested", "signature", "tail")

    def __init__(self, key: bytes, cut: int, request: InferRequest,
                 inputs: list[tuple[str, np.dtype[Any], tuple[int, ...], int]],
                 signature: tuple[tuple[str, str, tuple[int, ...]], ...]) -> None:
        #: The layout's fields before the id (name, version) and after it (the rest).
        self.prefix, self.middle = key[:cut], key[cut:]
        #: Per raw contents, in order: its tag and length as protobuf writes them, and the
        #: array it makes (input name, dtype, shape), of that many bytes.
        self.raws = [(bytes([_RAW << 3 | 2]) + varint(length), name, dtype, shape, length)
                     for name, dtype, shape, length in inputs]
        #: The bytes the raw contents take, tags and lengths included.
        self.tail = sum(len(raw[0]) + raw[4] for raw in self.raws)
        self.model_name = request.model_name
        self.model_version = request.model_version
        self.requested = request.requested_outputs
        self.classes = request.classification
        self.parameters = dict(request.parameters)
        self.priority = request.priority
        #: (name, datatype, shape) per input: what the normal decode's short path gives.
        self.signature = signature


def _scan(data: bytes) -> bytes | None:
    """The layout of ``data`` (the request less its id and raw contents) when its top-level
    fields are length-delimited fields 1-7 in ascending order (only 4-7 repeated) with at
    least one raw contents; else None."""
    size = len(data)
    pos = last = 0
    id_field = id_end = cut = 0
    try:
        while pos < size:
            tag = data[pos]
            if tag & 7 != 2:
                return None
            field = tag >> 3
            length = data[pos + 1]
            start = pos + 2
            if length > 0x7F:
                length, start = _long_varint(data, length, start)
            end = start + length
            if field == _RAW:
                if not cut:
                    cut = pos
            elif field <= last or field > _RAW:
                if field != last or field <= _ID:
                    return None
            elif field == _ID:
                id_field, id_end = pos, end
            last = field
            pos = end
    except (IndexError, ValueError):  # a tag or a length cut short, a length over 64 bits
        return None
    if pos != size or not cut:
        return None
    return data[:id_field] + data[id_end:cut] if id_end else data[:cut]


def _long_varint(data: bytes, first: int, start: int) -> tuple[int, int]:
    """The value of the varint whose first byte ``first`` (over 0x7F) is followed by more at
    ``start``, and where it ends; IndexError when cut short, ValueError past 64 bits."""
    value = first & 0x7F
    shift = 7
    while True:
        byte = data[start]
        start += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, start
        shift += 7
        if shift > 63:
            raise ValueError("varint over 64 bits")


def _split(key: bytes) -> int:
    """Where fields 4 and on begin in a layout (its fields are valid: :func:`_scan` read them)."""
    pos = 0
    while pos < len(key) and key[pos] >> 3 < 4:
        length = key[pos + 1]
        start = pos + 2
        if length > 0x7F:
            length, start = _long_varint(key, length, start)
        pos = start + length
    return pos


class RequestLayouts:
    """ModelInfer's request deserializer with a cache of learned layouts (see the module)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a request-layout cache holds at least one layout")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        #: Layout -> what it decodes to, or None for one the normal path must always take.
        self._layouts: dict[bytes, _Layout | None] = {}
        #: Misses since the last hit.
        self._streak = 0
        #: Hashes of layouts seen once and not learned.
        self._seen: set[int] = set()
        #: The layout of the last hit, tried first (load generators repeat one layout).
        self._recent: _Layout | None = None
        self._parse = tolerant(pb.ModelInferRequest.FromString)
        #: (message, layout) of the last miss that may be learned: :meth:`learn` takes it only
        #: for that very message (the bytes it was parsed from made the layout).
        self._candidate: tuple[Any, bytes] | None = None
        self.sluice_tolerant = True  # request_parsing: ModelInfer answers Unparsable itself

    @property
    def size(self) -> int:
        """Layouts cached (a property, not ``__len__``: grpc skips a falsy deserializer)."""
        return len(self._layouts)

    def counts(self) -> dict[str, int]:
        return {"hit": self.hits, "miss": self.misses}

    def __call__(self, data: bytes) -> Any:
        """The request of ``data``: an :class:`InferRequest` (no deadline yet) for a cached
        layout, else what ``ModelInferRequest.FromString`` makes of it (or the Unparsable
        marker)."""
        recent = self._recent
        if recent is not None:
            request = _matched(recent, data)
            if request is not None:
                self.hits += 1
                self._streak = 0
                return request
        streak = self._streak
        layout = None
        key = _scan(data) if streak < _COLD_AFTER or not streak % _COLD_SAMPLE else None
        if key is not None:
            layout = self._layouts.get(key, _UNSEEN)
            if layout is not None and layout is not _UNSEEN:
                request = _matched(layout, data)
                if request is not None:
                    self.hits += 1
                    self._streak = 0
                    self._recent = layout
                    return request
        self.misses += 1
        self._streak = streak + 1
        message = self._parse(data)
        if layout is _UNSEEN and key is not None and len(key) <= _KEY_LIMIT and (
            type(message) is pb.ModelInferRequest
        ):
            self._sighted(message, key)
        return message

    def _sighted(self, message: Any, key: bytes) -> None:
        """A layout not cached came in ``message``: a candidate to learn the second time."""
        seen = self._seen
        digest = hash(key)
        if digest in seen:
            seen.discard(digest)
            self._candidate = (message, key)
        else:
            if len(seen) >= _SEEN_LIMIT:
                seen.clear()
            seen.add(digest)

    def learn(self, message: Any, request: InferRequest) -> None:
        """Remember the layout of ``message`` (the last miss this deserializer parsed), which
        the normal path just decoded into ``request`` without error."""
        candidate = self._candidate
        if candidate is None or candidate[0] is not message:
            return
        self._candidate = None
        layouts = self._layouts
        if len(layouts) >= self.capacity:
            del layouts[next(iter(layouts))]
            self._recent = None
        key = candidate[1]
        layout = layouts[key] = _learned(key, message, request)
        if layout is not None:  # a layout that repeats: tried first, scanned again
            self._recent, self._streak = layout, 0


def _learned(key: bytes, message: Any, request: InferRequest) -> _Layout | None:
    """The layout ``key`` of ``message``, which decoded into ``request``; None when its
    requests must take the normal path (shared memory, a datatype other than plain raw data)."""
    raws = message.raw_input_contents
    tensors = message.inputs
    if request.shared_memory is not None or not len(raws) == len(tensors) == len(request.inputs):
        return None
    inputs = []
    signature = []
    for tensor, raw in zip(tensors, raws, strict=True):
        array = request.inputs[tensor.name]
        shape = tuple(tensor.shape)
        if tensor.datatype not in _PLAIN or array.shape != shape:
            return None
        inputs.append((tensor.name, array.dtype, shape, len(raw)))
        signature.append((tensor.name, tensor.datatype, shape))
    return _Layout(key, _split(key), request, inputs, tuple(signature))


def _matched(layout: _Layout, data: bytes) -> InferRequest | None:
    """The request ``data`` decodes to when it is of ``layout`` with its raw contents of the
    layout's lengths, written as protobuf writes them; else None (also for an id that is not
    UTF-8: the normal path then refuses it as protobuf does). The fields are compared as
    byte strings; only the id's length is read."""
    prefix = layout.prefix
    if not data.startswith(prefix):
        return None
    pos = len(prefix)
    id_start = id_end = 0
    if data[pos:pos + 1] == _ID_TAG:
        try:
            length = data[pos + 1]
            id_start = pos + 2
            if length > 0x7F:
                length, id_start = _long_varint(data, length, id_start)
        except (IndexError, ValueError):
            return None
        pos = id_end = id_start + length
    middle = layout.middle
    if not data.startswith(middle, pos):
        return None
    pos += len(middle)
    if pos + layout.tail != len(data):
        return None
    arrays = {}
    for header, name, dtype, shape, length in layout.raws:
        if not data.startswith(header, pos):
            return None
        pos += len(header)
        array = _ndarray(shape, dtype, data, pos)
        if not array.flags.aligned:  # as the normal path's arrays: over bytes of its own
            array = _ndarray(shape, dtype, data[pos:pos + length])
        arrays[name] = array
        pos += length
    request_id = ""
    if id_end:
        try:
            request_id = data[id_start:id_end].decode()
        except UnicodeDecodeError:
            return None
    return InferRequest(
        layout.model_name, layout.model_version, arrays, request_id, layout.requested,
        dict(layout.parameters) if layout.parameters else {}, None, layout.priority,
        layout.signature, None, layout.classes,
    )
