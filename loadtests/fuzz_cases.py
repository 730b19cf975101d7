"""The fuzzing campaign's cases and its judge, shared by the CI test (tests/integration/
test_fuzz.py, a server in the test process) and the nightly run (``python -m loadtests.fuzz``,
a server subprocess). Knows the server only through the wire: sluice.proto and grpc.

Cases:

* **structure-aware** (Hypothesis): a message of each RPC's request type built from its
  descriptor (every field, nested messages, maps, oneofs), strings drawn from names the server
  knows and names an attacker would try; ModelInferRequests built tensor by tensor (datatypes
  real and not, shapes odd, huge, negative, raw data of the right length or not, contents,
  parameters); ModelStreamInfer streams mixing such requests with bytes that do not parse.
* **byte-level**: valid messages of every request type (seeds) mutated by bit flips, byte
  overwrites, inserted and deleted runs, truncation, duplication and overlong varints, from a
  seeded ``random.Random`` (fast: the bulk of the cases), sent on one open channel.

The judge: every call has a deadline; a call that runs past it is a hang; INTERNAL and UNKNOWN
are failures (our bugs); every other status is an answer. Server-streaming Health.Watch waits
for changes by design, so it gets only bytes that do not parse (answered at once).
"""

from __future__ import annotations

import functools
import random
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import strategies as st

from sluice.proto import admin_pb2, grpc_service_pb2
from sluice.proto import grpc_service_pb2 as pb

#: Statuses that are failures whatever the request (our bugs, or a hang past the deadline).
FAILURES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                      grpc.StatusCode.DEADLINE_EXCEEDED})
#: Stream error items start with "[CODE]"; these codes are failures.
STREAM_FAILURES = ("[INTERNAL]", "[UNKNOWN]")
SERVICES = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    admin_pb2.DESCRIPTOR.services_by_name["Admin"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
#: Methods that wait on purpose (server-streaming watches): only unparsable bytes go there.
WAITING = frozenset({"grpc.health.v1.Health.Watch"})
#: Names an attacker tries, beside the server's own.
HOSTILE_NAMES = ("", "..", "../identity", "/etc/passwd", "identity/../identity", "identity\0",
                 "a" * 300, "%s%n", "identity ", "IDENTITY", "ident\u00e9ty", "1", "-1",
                 "stable", "candidate", "v1", "log_file")
DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES", "", "FP8", "fp32", "STRING")


@dataclass(frozen=True)
class Method:
    """One RPC: its path, request type and shape (streaming on either side)."""

    path: str
    full_name: str
    request: type
    client_streaming: bool
    server_streaming: bool


def methods() -> list[Method]:
    """Every method of every service the server offers, from the descriptors."""
    found = []
    for service in SERVICES:
        for method in service.methods:
            found.append(Method(
                f"/{service.full_name}/{method.name}", method.full_name,
                message_factory.GetMessageClass(method.input_type),
                method.client_streaming, method.server_streaming))
    return found


# -- structure-aware strategies -----------------------------------------------------------------


def names(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(known + HOSTILE_NAMES), st.text(max_size=40))


_SCALARS: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
    pbd.FieldDescriptor.TYPE_BOOL: st.booleans,
    pbd.FieldDescriptor.TYPE_DOUBLE: lambda: st.floats(),
    pbd.FieldDescriptor.TYPE_FLOAT: lambda: st.floats(width=32),
    pbd.FieldDescriptor.TYPE_INT64: lambda: st.integers(-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SINT64: lambda: st.integers(-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED64: lambda: st.integers(-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_UINT64: lambda: st.integers(0, 2**64 - 1),
    pbd.FieldDescriptor.TYPE_FIXED64: lambda: st.integers(0, 2**64 - 1),
    pbd.FieldDescriptor.TYPE_INT32: lambda: st.integers(-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SINT32: lambda: st.integers(-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED32: lambda: st.integers(-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_UINT32: lambda: st.integers(0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_FIXED32: lambda: st.integers(0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_BYTES: lambda: st.binary(max_size=64),
}


def _value(fd: pbd.FieldDescriptor, known: tuple[str, ...], depth: int) -> st.SearchStrategy:
    if fd.type == pbd.FieldDescriptor.TYPE_MESSAGE:
        return message_dicts(fd.message_type, known, depth + 1)
    if fd.type == pbd.FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values])
    if fd.type == pbd.FieldDescriptor.TYPE_STRING:
        return names(known)
    return _SCALARS[fd.type]()


@functools.lru_cache(maxsize=512)
def message_dicts(descriptor: pbd.Descriptor, known: tuple[str, ...],
                  depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Field name -> value for a message of ``descriptor``, any subset of its fields set
    (built once per type: building the strategy costs more than drawing from it)."""
    if depth > 3:
        return st.just({})
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name[
                "value"]
            fields[fd.name] = st.dictionaries(_value(key, known, depth), _value(value, known,
                                                                                depth), max_size=3)
        elif fd.is_repeated:
            fields[fd.name] = st.lists(_value(fd, known, depth), max_size=3)
        else:
            fields[fd.name] = _value(fd, known, depth)
    return st.fixed_dictionaries({}, optional=fields)


def build(cls: type, values: dict[str, Any]) -> Any:
    """A ``cls`` message from :func:`message_dicts` values (a later oneof member wins)."""
    message = cls()
    for name, value in values.items():
        fd = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        nested = fd.message_type
        if nested is not None and nested.GetOptions().map_entry:
            entry = nested.fields_by_name["value"]
            for k, v in value.items():
                if entry.message_type is not None:
                    target[k].CopyFrom(build(message_factory.GetMessageClass(
                        entry.message_type), v))
                else:
                    target[k] = v
        elif fd.is_repeated:
            if nested is not None:
                item_class = message_factory.GetMessageClass(nested)
                target.extend(build(item_class, item) for item in value)
            else:
                target.extend(value)
        elif nested is not None:
            target.CopyFrom(build(message_factory.GetMessageClass(nested), value))
        else:
            setattr(message, name, value)
    return message


@st.composite
def infer_requests(draw: st.DrawFn, models: tuple[str, ...]) -> pb.ModelInferRequest:
    """A ModelInferRequest built tensor by tensor: mostly plausible, often subtly wrong."""
    request = pb.ModelInferRequest(model_name=draw(names(models)),
                                   model_version=draw(st.sampled_from(("", "1", "2", "0", "-1",
                                                                       "x", "stable"))),
                                   id=draw(st.text(max_size=8)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(st.one_of(st.integers(0, 16), st.sampled_from(
            (-1, -(2**63), 2**31, 2**62, 2**63 - 1))), max_size=5))
        tensor = request.inputs.add(name=draw(st.sampled_from(("INPUT0", "INPUT1", "input", "",
                                                                "x"))),
                                    datatype=draw(st.sampled_from(DATATYPES)), shape=shape)
        if draw(st.booleans()):
            tensor.parameters[draw(st.sampled_from(("shared_memory_region", "binary_data_size",
                                                    "x")))].string_param = "r"
        if raw:
            length = draw(st.sampled_from((0, 1, 4, 63, 64, 1024))) if draw(st.booleans()) else 64
            request.raw_input_contents.append(draw(st.binary(min_size=length, max_size=length)))
        elif draw(st.booleans()):
            contents = draw(message_dicts(pb.InferTensorContents.DESCRIPTOR, models))
            tensor.contents.CopyFrom(build(pb.InferTensorContents, contents))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(("OUTPUT0", "OUTPUT1", "", "y"))))
    for key in draw(st.lists(st.sampled_from(("priority", "timeout", "sticky_key",
                                              "sequence_id", "x", "log_file")), max_size=3)):
        value = request.parameters[key]
        kind = draw(st.sampled_from(("int64_param", "string_param", "bool_param",
                                     "double_param", "uint64_param")))
        setattr(value, kind, draw(_SAMPLE_PARAM[kind]))
    return request


_SAMPLE_PARAM = {
    "int64_param": st.integers(-(2**63), 2**63 - 1),
    "uint64_param": st.integers(0, 2**64 - 1),
    "string_param": st.text(max_size=12),
    "bool_param": st.booleans(),
    "double_param": st.floats(),
}


# -- byte-level mutations -----------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` changed in one to four places."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # flip a bit
            at = min(at, len(out) - 1)
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # overwrite a byte with an interesting one
            out[min(at, len(out) - 1)] = rng.choice((0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A,
                                                     rng.randrange(256)))
        elif kind == 2:  # insert a run
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:  # delete a run
            del out[at:at + rng.randint(1, 8)]
        elif kind == 4:  # truncate
            del out[at:]
        elif kind == 5 and out:  # duplicate a slice
            end = min(len(out), at + rng.randint(1, 16))
            out[at:at] = out[at:end]
        else:  # an overlong varint
            out[at:at] = b"\xff" * rng.randint(1, 11)
    return bytes(out)


def seeds(models: tuple[str, ...], identity_input: bytes) -> dict[str, list[bytes]]:
    """Valid request bytes per method path (the mutations' starting points)."""
    infer = pb.ModelInferRequest(model_name=models[0], id="seed")
    infer.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    infer.raw_input_contents.append(identity_input)
    infer.parameters["priority"].int64_param = 1
    typed = pb.ModelInferRequest(model_name=models[0])
    typed.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend(
        [1.0] * 16)
    typed.outputs.add(name="OUTPUT0")
    found: dict[str, list[bytes]] = {}
    for method in methods():
        message = method.request()
        for name in ("name", "model_name", "model"):
            if name in method.request.DESCRIPTOR.fields_by_name:
                setattr(message, name, models[0])
        found[method.path] = [message.SerializeToString()]
    infer_path = "/inference.GRPCInferenceService/ModelInfer"
    found[infer_path] = [infer.SerializeToString(), typed.SerializeToString()]
    found["/inference.GRPCInferenceService/ModelStreamInfer"] = found[infer_path]
    return found


# -- the judge ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the server answered: counts by status, and the failures with what caused them."""

    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    cases: int = 0

    def record(self, method: Method, code: grpc.StatusCode, details: str, sent: bytes) -> bool:
        """Count one answer; False (and the failure noted) when it is one of FAILURES."""
        self.statuses[code.name] += 1
        if code in FAILURES:
            self.failures.append(f"{method.full_name}: {code.name} {details!r} for "
                                 f"{sent[:64].hex()}{'...' if len(sent) > 64 else ''}")
            return False
        return True


class Caller:
    """Sends request bytes to any method on one open channel, each call with a deadline."""

    def __init__(self, channel: grpc.Channel, tally: Tally, deadline_s: float = 10.0) -> None:
        self._channel = channel
        self.tally = tally
        self._deadline_s = deadline_s
        self._calls: dict[str, Any] = {}

    def _call(self, method: Method) -> Any:
        call = self._calls.get(method.path)
        if call is None:
            kind = {(False, False): self._channel.unary_unary,
                    (False, True): self._channel.unary_stream,
                    (True, False): self._channel.stream_unary,
                    (True, True): self._channel.stream_stream}[
                        method.client_streaming, method.server_streaming]
            call = self._calls[method.path] = kind(method.path)
        return call

    def send(self, method: Method, messages: list[bytes]) -> bool:
        """Send ``messages`` (one unless the method takes a stream); True when every answer is
        acceptable (stream items included)."""
        self.tally.cases += 1
        call = self._call(method)
        sent = b"|".join(messages)
        try:
            if method.client_streaming:
                replies = call(iter(messages), timeout=self._deadline_s)
            else:
                replies = call(messages[0], timeout=self._deadline_s)
            items = list(replies) if method.server_streaming else [replies]
        except grpc.RpcError as error:
            return self.tally.record(method, error.code(), error.details() or "", sent)
        ok = self.tally.record(method, grpc.StatusCode.OK, "", sent)
        if method.path.endswith("/ModelStreamInfer"):
            for item in items:
                text = pb.ModelStreamInferResponse.FromString(item).error_message
                if text.startswith(STREAM_FAILURES):
                    self.tally.failures.append(f"{method.full_name}: stream item {text!r}")
                    ok = False
            if len(items) != len(messages):
                self.tally.failures.append(
                    f"{method.full_name}: {len(messages)} messages, {len(items)} answers")
                ok = False
        return ok


def byte_cases(seed_bytes: dict[str, list[bytes]], count: int,
               rng: random.Random) -> Iterator[tuple[Method, list[bytes]]]:
    """``count`` (method, messages) cases of mutated seeds, methods in turn."""
    table = methods()
    for index in range(count):
        method = table[index % len(table)]
        seed = rng.choice(seed_bytes[method.path])
        mutated = mutate(seed, rng)
        if method.full_name in WAITING:
            mutated = b"\x0f" + mutated  # never parses: answered at once
        if method.client_streaming:
            yield method, [mutate(seed, rng) if rng.random() < 0.5 else seed
                           for _ in range(rng.randint(1, 3))] + [mutated]
        else:
            yield method, [mutated]


def structured_cases(caller: Caller, models: tuple[str, ...], examples: int, seed: int) -> None:
    """``examples`` Hypothesis cases: a third ModelInferRequests, a sixth ModelStreamInfer
    streams, the rest messages of every other method. Raises AssertionError (after Hypothesis
    shrank it) for the first case answered with a failure."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    table = {m.full_name: m for m in methods()}
    infer = table["inference.GRPCInferenceService.ModelInfer"]
    stream = table["inference.GRPCInferenceService.ModelStreamInfer"]
    others = [m for m in table.values() if m not in (infer, stream) and m.full_name not in
              WAITING]
    config = settings(deadline=None, database=None, derandomize=False, print_blob=False,
                      suppress_health_check=list(HealthCheck),
                      phases=(Phase.explicit, Phase.generate, Phase.shrink))

    @settings(config, max_examples=max(1, examples // 3))
    @given(infer_requests(models))
    def infer_case(request: pb.ModelInferRequest) -> None:
        assert caller.send(infer, [request.SerializeToString()]), caller.tally.failures[-1]

    @settings(config, max_examples=max(1, examples // 6))
    @given(st.lists(st.one_of(infer_requests(models).map(lambda r: r.SerializeToString()),
                              st.binary(max_size=24)), min_size=1, max_size=4))
    def stream_case(messages: list[bytes]) -> None:
        assert caller.send(stream, messages), caller.tally.failures[-1]

    @settings(config, max_examples=max(1, examples - examples // 3 - examples // 6))
    @given(st.data())
    def other_case(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(others))
        values = data.draw(message_dicts(method.request.DESCRIPTOR, models))
        sent = build(method.request, values).SerializeToString()
        assert caller.send(method, [sent]), caller.tally.failures[-1]

    for case in (infer_case, stream_case, other_case):
        with_seed(seed)(case)()


def printable(text: str) -> str:
    return "".join(c if c in string.printable else "?" for c in text)
