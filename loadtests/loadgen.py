"""One closed-loop load generator process (asyncio).

    python -m loadtests.loadgen --target HOST:PORT --model M --input NAME:DTYPE:DIMS ...
        --batch B --concurrency N --mode unary|stream (--duration S --latencies FILE | --count K)
        [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--token TOKEN]

N workers each send one pre-built request of B rows and await its answer, again and again: a
closed loop, so the offered load is whatever the server answers. Retries are off (``retries=0``
on the client, none here): a failed call counts as an error, never as a success.

* ``unary``: ModelInfer through :class:`clients.AsyncClient` ``infer_request`` (the pre-encoded
  path: the request is built once, only its serialization is paid per call), one channel shared
  by the N workers.
* ``stream``: ModelStreamInfer driven directly on the channel, not through
  ``AsyncClient.stream``: one bidi call per process with N requests in flight (a pipeline). Each
  worker owns a slot whose request is serialized once with ``id`` = slot number; a reader task
  matches answers to slots by that id, so answers may come back in any order. Going around the
  client keeps per-message work down to one write and one parse, which the generator needs to
  saturate a server on the same two cores.

Timed runs (``--duration``) talk to the parent over stdin/stdout: print ``ready`` after one
successful call, read the measurement start (a ``time.monotonic()`` instant, comparable across
processes) from stdin, warm up until then, measure ``duration`` seconds, let the calls in flight
finish, write the latencies (float64 seconds, ``time.perf_counter``) to ``--latencies`` as .npy
and print one JSON line. A request counts if it completes inside the window; throughput is that
count over the window. Counted runs (``--count``) just send K requests and print JSON.

Security (issue 14): ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for mTLS) make every channel
TLS; ``--token`` sends ``authorization: Bearer TOKEN`` on every call the way the clients do
(per-call metadata, :mod:`sluice.clients.auth`), so its cost is measured with the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from loadtests.models import InputSpec, make_inputs
from sluice.clients import AsyncClient, SluiceClientError
from sluice.clients.auth import bearer_metadata, resolve_token
from sluice.clients.messages import build_request, channel_options
from sluice.clients.tls import open_aio_channel, tls_credentials
from sluice.proto import grpc_service_pb2 as pb

_STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
_CALL_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 15.0

Call = Callable[[], Awaitable[None]]


class CallFailed(Exception):
    """One request got an error answer (RPC status or an in-band stream error)."""


class UnaryDriver:
    """ModelInfer through one :class:`clients.AsyncClient` (one channel, ``retries=0``) shared
    by every worker; ``caller(slot)`` sends the request built once by ``build_request``.
    """

    def __init__(self, target: str, model: str, inputs: dict[str, np.ndarray],
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None) -> None:
        self._client = AsyncClient(target, timeout=_CALL_TIMEOUT_S, retries=0,
                                   credentials=credentials, token=token)
        self._request = self._client.build_request(model, inputs)

    async def start(self, slots: int) -> None:
        pass  # the client connects on first use; run() makes one call before the clock starts

    def caller(self, slot: int) -> Call:
        infer_request = self._client.infer_request
        request = self._request

        async def call() -> None:
            try:
                await infer_request(request)
            except SluiceClientError as exc:
                raise CallFailed(f"{type(exc).__name__}: {exc}") from None

        return call

    async def close(self) -> None:
        await self._client.close()


class StreamDriver:
    """One ModelStreamInfer call with one request in flight per slot, answers matched by id."""

    def __init__(self, target: str, model: str, inputs: dict[str, np.ndarray],
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None) -> None:
        self._channel = open_aio_channel(target, channel_options(None), credentials)
        token = resolve_token(token)  # sent as the call's metadata, as AsyncClient does
        self._metadata = bearer_metadata(token) if token else None
        self._model = model
        self._inputs = inputs
        self._payloads: list[bytes] = []
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._write_lock = asyncio.Lock()  # grpc allows one write in flight per call
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, slots: int) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), _CONNECT_TIMEOUT_S)
        self._payloads = [
            build_request(self._model, self._inputs, request_id=str(slot)).SerializeToString()
            for slot in range(slots)
        ]
        # No serializers: payloads are bytes already, answers are parsed by the reader.
        method = self._channel.stream_stream(_STREAM_METHOD)
        self._call = method(timeout=None, metadata=self._metadata)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        parse = pb.ModelStreamInferResponse.FromString
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                answer = parse(message)
                future = self._waiting.pop(answer.infer_response.id, None)
                if future is not None and not future.done():
                    future.set_result(answer.error_message)
            reason = "stream ended"
        except grpc.aio.AioRpcError as exc:
            reason = f"stream failed: {exc.code().name}: {exc.details()}"
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CallFailed(reason))
        self._waiting.clear()

    def caller(self, slot: int) -> Call:
        key = str(slot)
        payload = self._payloads[slot]
        loop = asyncio.get_running_loop()

        async def call() -> None:
            if self._reader is None or self._reader.done():
                raise CallFailed("stream is closed")
            future: asyncio.Future[str] = loop.create_future()
            self._waiting[key] = future
            async with self._write_lock:
                await self._call.write(payload)
            error = await future
            if error:
                raise CallFailed(error)

        return call

    async def close(self) -> None:
        if self._call is not None:
            try:
                await self._call.done_writing()
            except grpc.aio.UsageError:
                pass
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5.0)
            except TimeoutError:
                self._reader.cancel()
        await self._channel.close()


class Tally:
    """Counts and latencies of one process, shared by its workers."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.sent = 0
        self.ok = 0  # successful answers at any time, warm-up included

    def error(self, exc: Exception) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = str(exc)[:300]


async def _timed_worker(call: Call, start: float, end: float, tally: Tally) -> None:
    clock = time.perf_counter
    record = tally.latencies.append
    while (sent := clock()) < end:
        try:
            await call()
        except CallFailed as exc:
            if sent >= start:
                tally.error(exc)
            continue
        done = clock()
        tally.ok += 1
        if start <= done < end:
            record(done - sent)


async def _counted_worker(call: Call, total: int, tally: Tally) -> None:
    while tally.sent < total:
        tally.sent += 1
        try:
            await call()
        except CallFailed as exc:
            tally.error(exc)
        else:
            tally.ok += 1


def _read_start() -> float:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("loadgen: no start time on stdin")
    return float(line)


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS channel credentials, or None: plaintext."""
    if args.tls_ca is None and args.tls_cert is None:
        return None
    return tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Drive the load; returns the JSON summary (latencies go to ``args.latencies``)."""
    inputs = make_inputs(tuple(InputSpec.from_arg(s) for s in args.input), args.batch, args.seed)
    driver_type = StreamDriver if args.mode == "stream" else UnaryDriver
    driver = driver_type(args.target, args.model, inputs, _credentials(args), args.token)
    tally = Tally()
    try:
        await driver.start(args.concurrency)
        calls = [driver.caller(slot) for slot in range(args.concurrency)]
        await calls[0]()  # fails loudly (CallFailed) before the parent starts the clock
        if args.count is not None:
            began = time.perf_counter()
            await asyncio.gather(*(_counted_worker(c, args.count, tally) for c in calls))
            return {
                "count": tally.ok,
                "total": tally.ok + 1,
                "errors": tally.errors,
                "first_error": tally.first_error,
                "elapsed_s": time.perf_counter() - began,
            }
        print("ready", flush=True)
        start_monotonic = await asyncio.get_running_loop().run_in_executor(None, _read_start)
        # Both clocks are CLOCK_MONOTONIC on Linux; the offset keeps this right where not.
        start = start_monotonic + (time.perf_counter() - time.monotonic())
        end = start + args.duration
        await asyncio.gather(*(_timed_worker(c, start, end, tally) for c in calls))
    finally:
        await driver.close()
    np.save(args.latencies, np.asarray(tally.latencies, dtype=np.float64))
    return {
        "count": len(tally.latencies),
        "total": tally.ok + 1,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "duration_s": args.duration,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loadgen", description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", action="append", required=True, help="NAME:DTYPE:D1xD2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--mode", choices=("unary", "stream"), default="unary")
    parser.add_argument("--duration", type=float, help="seconds measured after the start")
    parser.add_argument("--latencies", help=".npy file for the latencies of a timed run")
    parser.add_argument("--count", type=int, help="send this many requests instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tls-ca", help="PEM CA the server's certificate is checked against")
    parser.add_argument("--tls-cert", help="client certificate (mTLS; with --tls-key)")
    parser.add_argument("--tls-key", help="the client certificate's key")
    parser.add_argument("--token", help="bearer token sent with every call")
    args = parser.parse_args(argv)
    if (args.duration is None) == (args.count is None):
        parser.error("give exactly one of --duration and --count")
    if args.duration is not None and not args.latencies:
        parser.error("--duration needs --latencies")
    try:
        summary = asyncio.run(run(args))
    except CallFailed as exc:
        print(json.dumps({"fatal": str(exc)}), flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
