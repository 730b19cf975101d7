"""The Python gRPC ceiling: the least a grpc.aio KServe servicer can do per request.

    python -m loadtests.ceiling [--host 127.0.0.1] [--port 0]

With ``--shed``, ModelInfer instead turns every request away as Sluice sheds one (UNAVAILABLE,
trailers ``grpc-retry-pushback-ms`` and ``sluice-shed-reason``): the least a grpc.aio server can
spend on a request it refuses (:mod:`loadtests.reject_cost`).

Implements only ModelInfer (answers a constant, pre-built ModelInferResponse shaped like
identity's answer to a batch-1 request: OUTPUT0 FP32 [1,16]) and ModelStreamInfer (answers each
request with that constant). Requests are deserialized by the generated handler, as in any real
servicer, but never looked at, except that stream answers carry the request's ``id`` so a
pipelining client can match them; those answers are built once per distinct id and cached, so the
cost stays that of sending a constant. Every other RPC is UNIMPLEMENTED. Prints
``ceiling: gRPC listening on HOST:PORT`` once it accepts calls; SIGTERM or SIGINT stop it (exit 0).
Nothing here imports ``server``: Sluice is measured against this, not with it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import grpc
import numpy as np

from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc
from proto.tensors import make_output

_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def constant_response() -> pb.ModelInferResponse:
    """identity's answer to one row: OUTPUT0 FP32 [1,16] of zeros, model "identity" v1."""
    tensor, raw = make_output("OUTPUT0", np.zeros((1, 16), np.float32))
    response = pb.ModelInferResponse(model_name="identity", model_version="1")
    response.outputs.append(tensor)
    response.raw_output_contents.append(raw)
    return response


class CeilingServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """ModelInfer and ModelStreamInfer only, each answering a constant."""

    def __init__(self) -> None:
        self._response = constant_response()
        self._stream_answers: dict[str, pb.ModelStreamInferResponse] = {}

    async def ModelInfer(self, request, context):
        return self._response


class SheddingServicer(CeilingServicer):
    """ModelInfer refuses every request the way Sluice sheds one."""

    _TRAILERS = (("grpc-retry-pushback-ms", "10"), ("sluice-shed-reason", "deadline"))

    async def ModelInfer(self, request, context):
        context.set_trailing_metadata(self._TRAILERS)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "shed (ceiling --shed)")

    def _stream_answer(self, request_id: str) -> pb.ModelStreamInferResponse:
        answer = self._stream_answers.get(request_id)
        if answer is None:
            answer = pb.ModelStreamInferResponse(infer_response=self._response)
            answer.infer_response.id = request_id
            if len(self._stream_answers) < 4096:  # bounded: ids are slot numbers in practice
                self._stream_answers[request_id] = answer
        return answer

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            yield self._stream_answer(request.id)


async def serve(host: str, port: int, shed: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; prints the bound address first."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = SheddingServicer() if shed else CeilingServicer()
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"ceiling: could not bind {host}:{port}")
    await server.start()
    print(f"ceiling: gRPC listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--shed", action="store_true",
                        help="refuse every ModelInfer with UNAVAILABLE, as Sluice sheds")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.shed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
