"""A minimal KServe v2 HTTP servicer answering a constant: the ceiling REST on ``identity`` is
measured against (``loadtests.rest_bench``), on the same HTTP library as Sluice's REST door.

    python -m loadtests.rest_constant [--library aiohttp|starlette] [--port P] [--inline-ort]

It answers what ``perf_analyzer -i http`` asks for ``identity`` (model metadata, config,
readiness) and every POST to ``/v2/models/identity/infer`` with the same bytes: its body read,
then a binary-data response of ``OUTPUT0`` FP32 [1, 16] zeros, nothing parsed or computed. Prints
``HTTP listening on HOST:PORT`` once it listens. ``starlette`` (served by uvicorn on a loop it is
handed, not one of its own) was the other candidate when the library was chosen; it needs
``starlette``, ``uvicorn`` and ``httptools`` installed, which Sluice does not depend on.

``--inline-ort`` (aiohttp) computes instead: the simplest real REST servicer, the REST twin of
:mod:`loadtests.inline_ort`. Each infer body is split at its ``Inference-Header-Content-Length``,
the JSON header parsed, the one binary input read with ``np.frombuffer`` in the shape it names,
``identity``'s ONNX file run once on the event loop (one intra-op thread), and the output sent
back as binary data under a header built per request. No validation, batching or statistics:
what running the model costs over a constant answer on this HTTP library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
from pathlib import Path
from typing import Any

_IDENTITY = Path(__file__).resolve().parent.parent / "model_repository/identity/1/model.onnx"

_META = {
    "name": "identity", "versions": ["1"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}],
    "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]}],
}
_SERVER = {"name": "constant", "version": "0", "extensions": []}
_CONFIG = {
    "name": "identity", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
    "max_batch_size": 512,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
}
_HEADER = json.dumps({
    "model_name": "identity", "model_version": "1",
    "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 16],
                 "parameters": {"binary_data_size": 64}}],
}).encode()
_ANSWER = _HEADER + bytes(64)
_ANSWER_HEADERS = {"Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(len(_HEADER))}


def _bound(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _inline_ort() -> Any:
    """An infer function that runs ``identity`` on each body (see ``--inline-ort``)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(_IDENTITY), options, providers=["CPUExecutionProvider"])

    def infer(body: bytes, header_length: int) -> tuple[bytes, dict[str, str]]:
        request = json.loads(body[:header_length])
        shape = request["inputs"][0]["shape"]
        tensor = np.frombuffer(body, np.float32, offset=header_length).reshape(shape)
        (output,) = session.run(["OUTPUT0"], {"INPUT0": tensor})
        raw = output.tobytes()
        header = json.dumps({
            "model_name": "identity", "model_version": "1",
            "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": list(output.shape),
                         "parameters": {"binary_data_size": len(raw)}}],
        }).encode()
        return header + raw, {"Content-Type": "application/octet-stream",
                              "Inference-Header-Content-Length": str(len(header))}

    return infer


async def _serve_aiohttp(sock: socket.socket, stop: asyncio.Event,
                         inline_ort: bool = False) -> None:
    from aiohttp import web

    compute = _inline_ort() if inline_ort else None

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        if compute is not None:
            answer, headers = compute(
                body, int(request.headers["Inference-Header-Content-Length"]))
            return web.Response(body=answer, headers=headers)
        return web.Response(body=_ANSWER, headers=_ANSWER_HEADERS)

    async def meta(request: web.Request) -> web.Response:
        return web.json_response(_META)

    async def server(request: web.Request) -> web.Response:
        return web.json_response(_SERVER)

    async def config(request: web.Request) -> web.Response:
        return web.json_response(_CONFIG)

    async def ready(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v2/models/identity/infer", infer)
    app.router.add_get("/v2", server)
    app.router.add_get("/v2/models/identity", meta)
    app.router.add_get("/v2/models/identity/config", config)
    app.router.add_get("/v2/models/identity/ready", ready)
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    _announce(sock)
    await stop.wait()
    await runner.cleanup()


async def _serve_starlette(sock: socket.socket, stop: asyncio.Event) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(_ANSWER, headers=_ANSWER_HEADERS)

    async def meta(request: Request) -> Response:
        return JSONResponse(_META)

    async def config(request: Request) -> Response:
        return JSONResponse(_CONFIG)

    async def server_meta(request: Request) -> Response:
        return JSONResponse(_SERVER)

    async def ready(request: Request) -> Response:
        return Response()

    app = Starlette(routes=[
        Route("/v2/models/identity/infer", infer, methods=["POST"]),
        Route("/v2", server_meta), Route("/v2/models/identity", meta),
        Route("/v2/models/identity/config", config),
        Route("/v2/models/identity/ready", ready), Route("/v2/health/ready", ready),
    ])

    class _OnOurLoop(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # the process owns its signals, not uvicorn
            pass

    server = _OnOurLoop(uvicorn.Config(app, log_level="warning", access_log=False,
                                       http="httptools", lifespan="off"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn has no event to wait on  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    _announce(sock)
    await stop.wait()
    server.should_exit = True
    await task


def _announce(sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    print(f"HTTP listening on {host}:{port}", flush=True)


async def _main(library: str, port: int, inline_ort: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if library == "aiohttp":
        await _serve_aiohttp(_bound(port), stop, inline_ort)
    else:
        await _serve_starlette(_bound(port), stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", choices=("aiohttp", "starlette"), default="aiohttp")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--inline-ort", action="store_true",
                        help="run identity's ONNX file on each request instead (aiohttp only)")
    args = parser.parse_args(argv)
    if args.inline_ort and args.library != "aiohttp":
        parser.error("--inline-ort is served by aiohttp only")
    asyncio.run(_main(args.library, args.port, args.inline_ort))


if __name__ == "__main__":
    main()
