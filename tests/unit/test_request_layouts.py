"""The request-layout cache against protobuf's own parsing and the normal decoder.

Requests are built and serialized by protobuf itself; what the cache makes of their bytes is
compared with ``ModelInferRequest.FromString`` + ``codec.decode_request`` (the path every
request took before the cache). A hit must equal it field by field; anything else must be
what ``FromString`` makes (the same message, or the Unparsable marker).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto.params import set_param
from sluice.proto.tensors import make_input
from sluice.server.config.settings import RequestLimits
from sluice.server.protocol import codec
from sluice.server.protocol.request_layouts import CAPACITY, RequestLayouts
from sluice.server.protocol.request_parsing import Unparsable
from sluice.server.types import InferRequest

LIMITS = RequestLimits()
#: Datatype -> numpy dtype of the plain raw datatypes drawn here (all but BF16: ml_dtypes).
PLAIN = {"INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1",
         "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4",
         "FP64": "<f8"}

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=12)
ids = st.text(max_size=200)  # up to 200 characters: lengths that take a 2-byte varint too
param_values = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.text(max_size=20))


@st.composite
def layouts(draw):
    """(model, version, parameters, [(name, datatype, shape)], outputs) of a request."""
    count = draw(st.integers(1, 3))
    inputs = []
    for name in draw(st.lists(names, min_size=count, max_size=count, unique=True)):
        shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
        inputs.append((name, draw(st.sampled_from(sorted(PLAIN))), shape))
    parameters = draw(st.dictionaries(st.sampled_from(["client_tag", "x", "sticky"]),
                                      param_values, max_size=2))
    if draw(st.booleans()):
        parameters["priority"] = draw(st.integers(0, 5))
    outputs = draw(st.lists(names, max_size=2, unique=True))
    return (draw(names), draw(st.sampled_from(["", "1", "7"])), parameters, inputs, outputs)


def serialized(layout, request_id: str, data: st.DataObject | None = None) -> bytes:
    model, version, parameters, inputs, outputs = layout
    message = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for key, value in parameters.items():
        set_param(message.parameters, key, value)
    for name, datatype, shape in inputs:
        size = int(np.prod(shape)) * np.dtype(PLAIN[datatype]).itemsize
        raw = data.draw(st.binary(min_size=size, max_size=size)) if data else bytes(size)
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_input_contents.append(raw)
    for name in outputs:
        message.outputs.add(name=name)
    return message.SerializeToString()


def normal(data: bytes) -> InferRequest:
    """What the path before the cache decodes ``data`` to."""
    return codec.decode_request(pb.ModelInferRequest.FromString(data), None, LIMITS)


def taught(cache: RequestLayouts, data: bytes, times: int = 2) -> None:
    """Send ``data`` through ``cache`` ``times`` as ModelInfer does, decoding and offering each
    miss to learn (a layout is learned the second time it is seen)."""
    for _ in range(times):
        message = cache(data)
        assert type(message) is pb.ModelInferRequest
        cache.learn(message, codec.decode_request(message, None, LIMITS))


def assert_same(hit: InferRequest, expected: InferRequest) -> None:
    assert (hit.model_name, hit.model_version, hit.id) == (
        expected.model_name, expected.model_version, expected.id)
    assert list(hit.inputs) == list(expected.inputs)
    for name, array in expected.inputs.items():
        got = hit.inputs[name]
        assert (got.dtype, got.shape) == (array.dtype, array.shape)
        assert got.tobytes() == array.tobytes()
        assert got.flags.aligned and not got.flags.writeable
    assert hit.requested_outputs == expected.requested_outputs
    assert hit.parameters == expected.parameters and hit.parameters is not expected.parameters
    assert (hit.priority, hit.classification, hit.shared_memory, hit.deadline) == (
        expected.priority, expected.classification, None, None)
    if expected.signature is not None:  # (the codec's short path: a plan it has seen)
        assert hit.signature == expected.signature
    datatypes = {np.dtype(v): k for k, v in PLAIN.items()}
    assert hit.signature == tuple(
        (name, datatypes[array.dtype], array.shape) for name, array in expected.inputs.items())


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), ids, ids, st.data())
def test_a_repeated_layout_decodes_as_protobuf_and_the_codec_do(layout, first_id, second_id,
                                                                 data):
    cache = RequestLayouts()
    taught(cache, serialized(layout, first_id, data))
    again = serialized(layout, second_id, data)  # other id, other tensor bytes
    hit = cache(again)
    assert type(hit) is InferRequest, "a layout decoded once must be served from the cache"
    assert cache.hits == 1
    assert_same(hit, normal(again))
    third = serialized(layout, first_id, data)  # and again, through the last hit's guess
    assert_same(cache(third), normal(third))
    assert cache.hits == 2


def mutations():
    """(kind, position fraction, byte) edits of a serialized request."""
    return st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
                     st.floats(0, 1, exclude_max=True), st.integers(0, 255))


def mutated(data: bytes, edits) -> bytes:
    for kind, where, byte in edits:
        at = int(where * len(data)) if data else 0
        if kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ (byte or 1)]) + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + bytes([byte]) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1:]
        else:
            data = data[:at]
    return data


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(layouts(), ids, st.lists(mutations(), min_size=1, max_size=3), st.data())
def test_mutated_bytes_either_decode_exactly_or_take_the_normal_path(layout, request_id, edits,
                                                                     data):
    cache = RequestLayouts()
    original = serialized(layout, request_id, data)
    taught(cache, original)
    cache(original)  # the guess now holds this layout
    bad = mutated(original, edits)
    got = cache(bad)
    try:
        parsed = pb.ModelInferRequest.FromString(bad)
    except Exception:
        parsed = None
    if type(got) is InferRequest:
        assert parsed is not None, "a hit must be bytes protobuf parses"
        assert_same(got, codec.decode_request(parsed, None, LIMITS))
    elif parsed is None:
        assert type(got) is Unparsable
    else:
        assert got == parsed


def test_a_layout_is_not_learned_from_bytes_out_of_protobufs_order():
    tensor, raw = make_input("INPUT0", np.ones((1, 4), np.float32))
    name = pb.ModelInferRequest(model_name="m").SerializeToString()
    body = pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[raw]).SerializeToString()
    raw_field = pb.ModelInferRequest(raw_input_contents=[raw]).SerializeToString()
    inputs_field = pb.ModelInferRequest(inputs=[tensor]).SerializeToString()
    unknown = b"\x42\x01x"  # field 8, length-delimited: not a ModelInferRequest field
    for data in (raw_field + inputs_field + name,  # raw contents first
                 name + body + unknown,            # an unknown field
                 name + name + body,               # the model name twice
                 name + b"\x1a\x01a\x1a\x01b" + body):  # two ids (protobuf keeps the last)
        cache = RequestLayouts()
        for _ in range(3):
            message = cache(data)
            assert message == pb.ModelInferRequest.FromString(data)
            cache.learn(message, codec.decode_request(message, None, LIMITS))
        assert (cache.hits, cache.size) == (0, 0)


def test_bool_bytes_and_shared_memory_layouts_always_take_the_normal_path():
    flags, flag_raw = make_input("FLAGS", np.array([[True, False]]))
    words, word_raw = make_input("WORDS", np.array([[b"ab", b"c"]], dtype=object))
    plain, plain_raw = make_input("X", np.ones((1, 2), np.float32))
    requests = [
        pb.ModelInferRequest(model_name="m", inputs=[flags], raw_input_contents=[flag_raw]),
        pb.ModelInferRequest(model_name="m", inputs=[words], raw_input_contents=[word_raw]),
    ]
    for request in requests:
        cache = RequestLayouts()
        data = request.SerializeToString()
        taught(cache, data, times=3)
        assert cache.hits == 0 and cache.misses == 3
    # A layout the normal path refuses (an output in shared memory, no regions) is never
    # learned: ModelInfer learns only what decoded.
    refused = pb.ModelInferRequest(model_name="m", inputs=[plain], raw_input_contents=[plain_raw])
    refused.outputs.add(name="Y").parameters["shared_memory_region"].string_param = "r"
    cache = RequestLayouts()
    for _ in range(3):
        message = cache(refused.SerializeToString())
        with pytest.raises(Exception, match="shared memory"):
            codec.decode_request(message, None, LIMITS)
    assert cache.hits == 0 and cache.size == 0


def test_raw_contents_of_another_length_or_count_and_bad_ids_take_the_normal_path():
    tensor, raw = make_input("X", np.arange(4, dtype=np.float32).reshape(1, 4))
    cache = RequestLayouts()
    taught(cache, pb.ModelInferRequest(model_name="m", id="1", inputs=[tensor],
                                       raw_input_contents=[raw]).SerializeToString())
    short = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[raw[:-4]])
    extra = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[raw, raw])
    for request in (short, extra):
        message = cache(request.SerializeToString())
        assert message == request
        with pytest.raises(Exception, match="X|raw"):  # the codec's own refusal, as before
            codec.decode_request(message, None, LIMITS)
    good = pb.ModelInferRequest(model_name="m", id="é", inputs=[tensor], raw_input_contents=[raw])
    data = good.SerializeToString()
    at = data.index("é".encode())
    not_utf8 = data[:at] + b"\xc3\x28" + data[at + 2:]
    assert type(cache(not_utf8)) is Unparsable  # as FromString: invalid UTF-8 in a string
    # A raw length written with more varint bytes than it needs: protobuf reads it; the
    # layout's guess does not, so it takes the normal path, and still decodes the same.
    at = data.index(b"\x3a\x10") + 1
    long_length = data[:at] + b"\x90\x00" + data[at + 1:]
    message = cache(long_length)
    assert type(message) is pb.ModelInferRequest and message == good
    assert cache.hits == 0


def test_misaligned_raw_contents_are_copied_into_aligned_arrays():
    tensor, raw = make_input("X", np.arange(8, dtype=np.float64).reshape(1, 8))
    cache = RequestLayouts()
    taught(cache, pb.ModelInferRequest(model_name="m", inputs=[tensor],
                                       raw_input_contents=[raw]).SerializeToString())
    for request_id in ("", "a", "ab", "abc", "abcd", "abcdefg"):  # payload offsets shift
        data = pb.ModelInferRequest(model_name="m", id=request_id, inputs=[tensor],
                                    raw_input_contents=[raw]).SerializeToString()
        hit = cache(data)
        assert type(hit) is InferRequest and hit.inputs["X"].flags.aligned
        np.testing.assert_array_equal(hit.inputs["X"], np.arange(8.0).reshape(1, 8))


def test_the_cache_holds_at_most_its_capacity_oldest_learned_out_first():
    cache = RequestLayouts()

    def request(rows: int) -> bytes:
        tensor, raw = make_input("X", np.full((rows, 2), rows, np.float32))
        return pb.ModelInferRequest(model_name="m", inputs=[tensor],
                                    raw_input_contents=[raw]).SerializeToString()

    for rows in range(1, CAPACITY + 6):
        taught(cache, request(rows))
    assert cache.size == CAPACITY
    assert type(cache(request(1))) is pb.ModelInferRequest  # the oldest went first
    hit = cache(request(CAPACITY + 5))
    assert type(hit) is InferRequest and hit.inputs["X"][0, 0] == CAPACITY + 5
    assert cache.counts() == {"hit": 1, "miss": 2 * (CAPACITY + 5) + 1}


def test_a_layout_is_learned_the_second_time_it_is_seen_and_only_when_short():
    cache = RequestLayouts()
    tensor, raw = make_input("X", np.ones((1, 2), np.float32))
    message = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[raw])
    for tag in range(5):  # every request its own layout: nothing learned
        message.parameters["tag"].int64_param = tag
        taught(cache, message.SerializeToString(), times=1)
    assert cache.size == 0
    taught(cache, message.SerializeToString(), times=1)  # the last one, again
    assert cache.size == 1
    message.parameters["note"].string_param = "x" * 5000  # a layout over 4 KiB
    taught(cache, message.SerializeToString(), times=3)
    assert cache.size == 1 and type(cache(message.SerializeToString())) is pb.ModelInferRequest


def test_after_a_long_run_of_misses_a_repeated_layout_is_still_learned():
    cache = RequestLayouts()
    tensor, raw = make_input("X", np.ones((1, 2), np.float32))
    message = pb.ModelInferRequest(model_name="m", inputs=[tensor], raw_input_contents=[raw])
    for tag in range(300):  # layouts that never repeat: the cache goes cold
        message.parameters["tag"].int64_param = tag
        taught(cache, message.SerializeToString(), times=1)
    data = message.SerializeToString()
    kinds = []
    for _ in range(40):  # one request in 16 is scanned: learned at its second scan
        got = cache(data)
        kinds.append(type(got))
        if type(got) is pb.ModelInferRequest:
            cache.learn(got, codec.decode_request(got, None, LIMITS))
    first = kinds.index(InferRequest)
    assert first <= 21 and set(kinds[first:]) == {InferRequest}
