"""The bearer token as per-call metadata (clients/auth.py TokenStub), seen by a real grpc.aio
server: what arrives is the caller's metadata, then ``authorization: Bearer <token>``, on unary
calls, streams and a call whose response the client only reads trailers of; and AsyncClient's
channel carries no interceptor (grpc.aio's intercepted calls cost 50-90 us a call)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from sluice.clients import AsyncClient
from sluice.clients.auth import TokenStub, token_stub
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc

TOKEN = "sluice_tokenid_secret"


def _seen(context: grpc.aio.ServicerContext) -> list[str]:
    """The call's own metadata (grpc's reserved and user-agent keys left out), as 'k=v'."""
    return [f"{key}={value}" for key, value in context.invocation_metadata()
            if not key.startswith(("grpc-", "user-agent"))]


EXPECTED = [f"authorization=Bearer {TOKEN}"]


class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
    """ServerMetadata and ModelInfer answer with the metadata their call arrived with (in the
    reply's string fields); ModelStatistics and ModelStreamInfer refuse a call whose metadata
    is not exactly the token's."""

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="echo", extensions=_seen(context))

    async def ModelInfer(self, request, context):
        return pb.ModelInferResponse(model_name=request.model_name, id="|".join(_seen(context)))

    async def ModelStatistics(self, request, context):
        if _seen(context) != EXPECTED:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "|".join(_seen(context)))
        return pb.ModelStatisticsResponse()

    async def ModelStreamInfer(self, request_iterator, context):
        seen = _seen(context)
        async for request in request_iterator:
            answer = pb.ModelStreamInferResponse(
                infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                     id=request.id))
            if seen != EXPECTED:
                answer.error_message = "|".join(seen)
            yield answer


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.mark.parametrize("reuse", [False, True])
async def test_the_token_follows_the_callers_own_metadata(echo: str, reuse: bool):
    async with grpc.aio.insecure_channel(echo) as channel:
        stub = TokenStub(pb_grpc.GRPCInferenceServiceStub(channel), TOKEN, reuse_metadata=reuse)
        alone = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
        both = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30,
                                         metadata=(("x-caller", "batch-7"),))
        again = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
    assert list(alone.extensions) == EXPECTED
    assert list(both.extensions) == ["x-caller=batch-7", *EXPECTED]
    assert list(again.extensions) == EXPECTED  # the shared header is the token alone, still


def test_no_token_leaves_the_stub_as_it_is(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SLUICE_TOKEN", raising=False)
    stub = object()
    assert token_stub(stub, None) is stub
    assert token_stub(stub, "  ") is stub
    monkeypatch.setenv("SLUICE_TOKEN", TOKEN)
    assert isinstance(token_stub(stub, None), TokenStub)  # $SLUICE_TOKEN, as the clients read it


async def test_the_async_client_sends_it_on_every_kind_of_call(echo: str):
    rows = np.ones((1, 16), np.float32)
    async with AsyncClient(echo, timeout=30, token=TOKEN) as client:
        reply = await client.infer_request(client.build_request("identity", {"INPUT0": rows}))
        streamed = [result async for result in client.stream("identity", [{"INPUT0": rows}] * 2)]
        assert await client.latency() == {}  # the call object's trailers, not its response
        server = await client.server_metadata()
        channel = client._channel
    assert reply.id == EXPECTED[0]
    assert sorted(result.index for result in streamed) == [0, 1]
    assert [result.error for result in streamed] == [None, None]
    assert server["extensions"] == EXPECTED
    # Per-call metadata, not a channel interceptor: grpc.aio keeps none for this channel.
    assert not channel._unary_unary_interceptors and not channel._stream_stream_interceptors
