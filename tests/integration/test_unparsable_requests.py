"""Bytes that are not a valid protobuf message are INVALID_ARGUMENT naming the message type, on
every RPC of every service the server offers (never grpc.aio's UNKNOWN "Unexpected <class
'google.protobuf.message.DecodeError'>"), are counted, and leave the server answering.

The methods come from the services' descriptors, so a method added later is covered without
touching this file. Each is called through a raw channel method (bytes in, bytes out) on a real
server.
"""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from sluice.proto import admin_pb2, grpc_service_pb2
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto.tensors import decode_outputs, make_input
from sluice.server.config.settings import ServerConfig
from tests.support.bundled_inputs import REPO
from tests.support.metrics import labels, moved, scrape
from tests.support.running import start_server

#: Bytes no message parses: field 1 as a length-delimited field longer than what follows, a
#: wire type that does not exist (7), and a group start never ended.
GARBAGE = (b"\x0a\x05ab", b"\x0f", b"\x0b")

SERVICES = [
    descriptor.services_by_name[name]
    for descriptor, name in (
        (grpc_service_pb2.DESCRIPTOR, "GRPCInferenceService"),
        (admin_pb2.DESCRIPTOR, "Admin"),
        (health_pb2.DESCRIPTOR, "Health"),
        (reflection_pb2.DESCRIPTOR, "ServerReflection"),
    )
]
METHODS = [(service.full_name, method) for service in SERVICES for method in service.methods]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO / "identity", root / "identity")
    running = start_server(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0,
                                        state_dir=root / ".state"))
    yield running
    running.stop()


def identity_request(value: float) -> pb.ModelInferRequest:
    tensor, raw = make_input("INPUT0", np.full((1, 16), value, np.float32))
    return pb.ModelInferRequest(model_name="identity", inputs=[tensor], raw_input_contents=[raw])


def call_raw(channel: grpc.Channel, service: str, method, data: bytes) -> list[bytes]:
    """Call ``method`` with ``data`` as the request's bytes; the response messages' bytes."""
    path = f"/{service}/{method.name}"
    if method.client_streaming and method.server_streaming:
        return list(channel.stream_stream(path)(iter([data]), timeout=10))
    if method.client_streaming:
        return [channel.stream_unary(path)(iter([data]), timeout=10)]
    if method.server_streaming:
        return list(channel.unary_stream(path)(data, timeout=10))
    return [channel.unary_unary(path)(data, timeout=10)]


@pytest.mark.parametrize(
    ("service", "method"), METHODS, ids=[f"{s.split('.')[-1]}.{m.name}" for s, m in METHODS]
)
def test_a_request_that_does_not_parse_is_invalid_argument_naming_its_type(
    server, service, method
):
    with grpc.insecure_channel(server.address) as channel:
        for data in GARBAGE:
            if method.full_name == "inference.GRPCInferenceService.ModelStreamInfer":
                # A stream answers each message on its own and stays open (streaming.py).
                (reply,) = call_raw(channel, service, method, data)
                item = pb.ModelStreamInferResponse.FromString(reply)
                assert item.error_message == (
                    "[INVALID_ARGUMENT] the request is not a valid inference.ModelInferRequest "
                    "message (it does not parse)")
                assert item.infer_response.id  # one the server made
                continue
            with pytest.raises(grpc.RpcError) as info:
                call_raw(channel, service, method, data)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert info.value.details() == (
                f"the request is not a valid {method.input_type.full_name} message "
                "(it does not parse)")


def test_a_stream_answers_a_bad_message_and_then_the_good_ones(server):
    good = [identity_request(v) for v in (1.5, 2.5)]
    sent = [good[0].SerializeToString(), GARBAGE[0], good[1].SerializeToString()]
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        replies = [pb.ModelStreamInferResponse.FromString(r) for r in call(iter(sent), timeout=30)]
    errors = [r.error_message for r in replies if r.error_message]
    assert errors == ["[INVALID_ARGUMENT] the request is not a valid inference.ModelInferRequest "
                      "message (it does not parse)"]
    values = sorted(float(decode_outputs(r.infer_response)["OUTPUT0"][0, 0])
                    for r in replies if not r.error_message)
    assert values == [1.5, 2.5]


def test_refusals_are_counted_and_a_good_request_still_answers(server):
    before = scrape(server)
    with grpc.insecure_channel(server.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        for data in GARBAGE:
            for method in (infer, check):
                with pytest.raises(grpc.RpcError):
                    method(data, timeout=10)
        reply = pb.ModelInferResponse.FromString(
            infer(identity_request(3.0).SerializeToString(), timeout=10))
    assert moved(before, scrape(server), "sluice_refused_requests_total") == {
        labels(code="invalid_argument"): 2 * len(GARBAGE)}
    np.testing.assert_array_equal(decode_outputs(reply)["OUTPUT0"], np.full((1, 16), 3.0))


def test_a_message_that_parses_reaches_reflection_unchanged(server):
    """The guard hands a message that parses to the service as it is."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/"
                                     "ServerReflectionInfo")
        (reply,) = list(call(iter([request.SerializeToString()]), timeout=10))
    names = {s.name for s in reflection_pb2.ServerReflectionResponse.FromString(
        reply).list_services_response.service}
    assert names == {"inference.GRPCInferenceService", "sluice.admin.v1.Admin",
                     "grpc.reflection.v1alpha.ServerReflection"}
