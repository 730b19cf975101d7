"""The Python gRPC ceiling: the least a grpc.aio KServe servicer can do per request.

    python -m loadtests.ceiling [--host 127.0.0.1] [--port 0] [--shed] [--model-dir DIR]
        [--tls-cert FILE --tls-key FILE]

With ``--shed``, ModelInfer instead turns every request away as Sluice sheds one (UNAVAILABLE,
trailers ``grpc-retry-pushback-ms`` and ``sluice-shed-reason``): the least a grpc.aio server can
spend on a request it refuses (:mod:`loadtests.reject_cost`).

Implements ModelInfer (answers a constant, pre-built ModelInferResponse shaped like the model's
answer to a batch-1 request, zeros in every output; by default identity's: OUTPUT0 FP32 [1,16])
and ModelStreamInfer (answers each request with that constant). Requests are deserialized by the
generated handler, as in any real servicer, but never looked at, except that stream answers carry
the request's ``id`` so a pipelining client can match them; those answers are built once per
distinct id and cached, so the cost stays that of sending a constant. ``--model-dir DIR`` (a
Triton-layout model directory; default the bundled identity) names the model whose answer is
imitated and whose ModelMetadata/ModelConfig are served (:mod:`loadtests.peer_metadata`), so
perf_analyzer can measure the ceiling (:mod:`loadtests.peers`); those, ServerLive, ServerReady and
ModelReady are built once at start. Every other RPC is UNIMPLEMENTED. ``--tls-cert/--tls-key``
serve TLS with plain ``grpc.ssl_server_credentials`` (what grpc's own TLS costs a bare servicer,
:mod:`loadtests.auth_latency`). Prints
``ceiling: gRPC listening on HOST:PORT`` once it accepts calls; SIGTERM or SIGINT stop it (exit 0).
Nothing here imports ``server``: Sluice is measured against this, not with it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from loadtests.models import MODEL_REPOSITORY
from loadtests.peer_metadata import DescribingServicer, PeerModel
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc

_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
IDENTITY_DIR = MODEL_REPOSITORY / "identity"


def constant_response(model_dir: Path = IDENTITY_DIR) -> pb.ModelInferResponse:
    """The model's answer to one row, zeros (identity's: OUTPUT0 FP32 [1,16], "identity" v1)."""
    return PeerModel.load(model_dir).zeros_response()


class CeilingServicer(DescribingServicer):
    """ModelInfer and ModelStreamInfer each answering a constant, plus the model's description."""

    def __init__(self, model_dir: Path = IDENTITY_DIR) -> None:
        super().__init__(PeerModel.load(model_dir))
        self._response = self.model.zeros_response()
        self._stream_answers: dict[str, pb.ModelStreamInferResponse] = {}

    async def ModelInfer(self, request, context):
        return self._response

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


class SheddingServicer(CeilingServicer):
    """ModelInfer refuses every request the way Sluice sheds one."""

    _TRAILERS = (("grpc-retry-pushback-ms", "10"), ("sluice-shed-reason", "deadline"))

    async def ModelInfer(self, request, context):
        context.set_trailing_metadata(self._TRAILERS)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "shed (ceiling --shed)")


async def serve_servicer(
    servicer: grpc_service_pb2_grpc.GRPCInferenceServiceServicer, label: str, host: str, port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> None:
    """Serve ``servicer`` until SIGTERM/SIGINT; prints ``LABEL: gRPC listening on HOST:PORT``
    first (TLS with ``credentials``, else plaintext). Shared with :mod:`loadtests.inline_ort`,
    so both bare servers differ only in ModelInfer."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    bound = (server.add_insecure_port(address) if credentials is None
             else server.add_secure_port(address, credentials))
    if bound == 0:
        raise SystemExit(f"{label}: could not bind {host}:{port}")
    await server.start()
    print(f"{label}: gRPC listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


async def serve(host: str, port: int, shed: bool = False,
                model_dir: Path = IDENTITY_DIR,
                credentials: grpc.ServerCredentials | None = None) -> None:
    """Serve the ceiling until SIGTERM/SIGINT; prints the bound address first."""
    servicer = SheddingServicer(model_dir) if shed else CeilingServicer(model_dir)
    await serve_servicer(servicer, "ceiling", host, port, credentials)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.ceiling", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--shed", action="store_true",
                        help="refuse every ModelInfer with UNAVAILABLE, as Sluice sheds")
    parser.add_argument("--model-dir", type=Path, default=IDENTITY_DIR,
                        help="model whose answer and description are served (default identity)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    parser.add_argument("--tls-key", type=Path, help="its PEM private key")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    credentials = None if args.tls_cert is None else grpc.ssl_server_credentials(
        [(args.tls_key.read_bytes(), args.tls_cert.read_bytes())])
    asyncio.run(serve(args.host, args.port, args.shed, args.model_dir, credentials))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
