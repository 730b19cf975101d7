"""One open-loop load generator process (asyncio): requests leave on a fixed timetable.

    python -m loadtests.openloop --target HOST:PORT --model M --phases JSON --deadline-ms D
        --out FILE.npz [--batch B] [--proc K --procs N] [--channels C] [--max-outstanding M]

The timetable is a list of phases ``[{"rate": req/s for this process, "duration_s": s,
"p1_share": null | fraction}]`` laid end to end. Request *j* of a phase is due at
``phase start + (j + K/N) / rate``: the N processes of one run interleave evenly. A request is
sent when it is due whether or not earlier ones were answered (an open loop, so a slow server
cannot slow the offered load down); the only limit is ``--max-outstanding`` calls in flight, and
a request due while that many are outstanding is not sent and is counted as a generator-side
drop (code -1), never as a server failure. In a phase with ``p1_share`` f, an evenly spread
share f of the requests carries the parameter ``priority`` = 1 and the rest ``priority`` = 2;
in other phases no priority is sent.

Every call carries the gRPC deadline ``--deadline-ms``. Requests are built once from the
server's ModelMetadata with :func:`sluice.clients.messages.build_request` and sent as bytes on
``--channels`` channels, each its own TCP connection (so ``--workers`` servers behind one
SO_REUSEPORT port all get traffic); answers are not parsed, only their status is kept.

Protocol with the parent: print ``ready`` once every channel has answered one call, read the
start instant (``time.monotonic()``) from stdin, run the timetable, wait for the calls in flight
(at most the deadline plus 5 s), write ``--out`` and print one JSON line. The .npz holds, per
request in timetable order: ``sched``, ``send``, ``end`` (seconds after the start; NaN when not
sent), ``code`` (gRPC status number, 0 = OK, -1 = generator drop), ``prio`` (0 = none) and
``reason`` (index into the ``reasons`` array of ``sluice-shed-reason`` trailers, -1 = none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
import numpy as np

from loadtests.models import inputs_from_metadata
from sluice.clients import AsyncClient, SluiceClientError
from sluice.clients.errors import SHED_REASON_KEY
from sluice.clients.messages import build_request, channel_options

_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_CONNECT_TIMEOUT_S = 15.0
_DROPPED = -1
_BURST = 256  # requests launched before yielding to the loop when the timetable is behind


def timetable(
    phases: list[dict[str, Any]], proc: int, procs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Due times (seconds after the start) and priorities (0 none, 1 or 2) of this process."""
    times, prios = [], []
    start = 0.0
    for phase in phases:
        rate, duration = float(phase["rate"]), float(phase["duration_s"])
        count = int(duration * rate)
        j = np.arange(count, dtype=np.float64)
        times.append(start + (j + proc / procs) / rate if rate > 0 else j)
        share = phase.get("p1_share")
        if share is None:
            prios.append(np.zeros(count, np.int8))
        else:  # request j is priority 1 when floor((j + 1) f) steps up: exactly f, evenly spread
            p1 = np.floor((j + 1) * share) > np.floor(j * share)
            prios.append(np.where(p1, 1, 2).astype(np.int8))
        start += duration
    return np.concatenate(times), np.concatenate(prios)


class Generator:
    """Owns the channels, the prepared payloads and the per-request records."""

    def __init__(self, args: argparse.Namespace, sched: np.ndarray, prios: np.ndarray) -> None:
        self.args = args
        self.sched, self.prio = sched, prios
        n = sched.size
        self.send = np.full(n, np.nan)
        self.end = np.full(n, np.nan)
        self.code = np.full(n, -2, np.int16)
        self.reason = np.full(n, -1, np.int8)
        self.reasons: dict[str, int] = {}
        self.deadline_s = args.deadline_ms / 1e3
        self.payloads: dict[int, bytes] = {}
        options = channel_options([("grpc.use_local_subchannel_pool", 1)])
        self.channels = [
            grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)
        ]
        self.methods = [ch.unary_unary(_METHOD) for ch in self.channels]  # bytes in, bytes out
        self.tasks: set[asyncio.Task[None]] = set()
        self.max_outstanding = 0
        self.t0 = 0.0

    async def prepare(self) -> None:
        async with AsyncClient(self.args.target, timeout=_CONNECT_TIMEOUT_S, retries=2) as client:
            metadata = await client.model_metadata(self.args.model)
        inputs = inputs_from_metadata(metadata, self.args.batch, self.args.seed)
        for prio in (0, 1, 2):
            params = {"priority": prio} if prio else None
            request = build_request(self.args.model, inputs, parameters=params)
            self.payloads[prio] = request.SerializeToString()
        for channel, method in zip(self.channels, self.methods, strict=True):
            await asyncio.wait_for(channel.channel_ready(), _CONNECT_TIMEOUT_S)
            await method(self.payloads[0], timeout=_CONNECT_TIMEOUT_S)  # raises if it fails

    def _reason(self, exc: grpc.aio.AioRpcError) -> int:
        for key, value in exc.trailing_metadata() or ():
            if key == SHED_REASON_KEY:
                text = value.decode() if isinstance(value, bytes) else str(value)
                return self.reasons.setdefault(text, len(self.reasons))
        return -1

    async def _one(self, i: int) -> None:
        method = self.methods[i % len(self.methods)]
        payload = self.payloads[int(self.prio[i])]
        clock = time.perf_counter
        sent = clock()
        try:
            await method(payload, timeout=self.deadline_s)
            code = 0
        except grpc.aio.AioRpcError as exc:
            code = exc.code().value[0]
            if code == grpc.StatusCode.UNAVAILABLE.value[0]:
                self.reason[i] = self._reason(exc)
        done = clock()
        self.send[i] = sent - self.t0
        self.end[i] = done - self.t0
        self.code[i] = code

    async def run(self, start_perf: float) -> None:
        """Send the whole timetable from ``start_perf`` (a ``time.perf_counter`` instant)."""
        self.t0 = start_perf
        clock = time.perf_counter
        sched, tasks, cap = self.sched, self.tasks, self.args.max_outstanding
        loop = asyncio.get_running_loop()
        n, i = sched.size, 0
        await asyncio.sleep(max(0.0, start_perf - clock()))
        while i < n:
            now = clock() - start_perf
            burst = 0
            while i < n and sched[i] <= now and burst < _BURST:
                if len(tasks) >= cap:
                    self.code[i] = _DROPPED
                else:
                    task = loop.create_task(self._one(i))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                i += 1
                burst += 1
            self.max_outstanding = max(self.max_outstanding, len(tasks))
            if i < n:
                await asyncio.sleep(max(0.0, sched[i] - (clock() - start_perf)))
        if tasks:
            await asyncio.wait(tasks, timeout=self.deadline_s + 5.0)
        for task in tasks:
            task.cancel()  # a call that outlived its own deadline by 5 s: recorded as not ended

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def _read_start() -> float:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("openloop: no start time on stdin")
    return float(line)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    phases = json.loads(args.phases)
    sched, prios = timetable(phases, args.proc, args.procs)
    gen = Generator(args, sched, prios)
    try:
        await gen.prepare()
        print("ready", flush=True)
        start_monotonic = await asyncio.get_running_loop().run_in_executor(None, _read_start)
        # Both clocks are CLOCK_MONOTONIC on Linux; the offset keeps this right where not.
        start = start_monotonic + (time.perf_counter() - time.monotonic())
        cpu = time.process_time()
        await gen.run(start)
        cpu = time.process_time() - cpu
    finally:
        await gen.close()
    reasons = sorted(gen.reasons, key=gen.reasons.__getitem__)
    np.savez(
        args.out, sched=gen.sched, send=gen.send, end=gen.end, code=gen.code, prio=gen.prio,
        reason=gen.reason, reasons=np.asarray(reasons, dtype=str),
    )
    lag = gen.send - gen.sched
    lag = lag[~np.isnan(lag)]
    return {
        "planned": int(sched.size),
        "sent": int(np.count_nonzero(gen.code != _DROPPED)),
        "dropped": int(np.count_nonzero(gen.code == _DROPPED)),
        "unfinished": int(np.count_nonzero(gen.code == -2)),
        "max_outstanding": gen.max_outstanding,
        "cpu_s": cpu,
        "lag_p99_ms": float(np.percentile(lag, 99) * 1e3) if lag.size else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.openloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--model", required=True)
    parser.add_argument("--phases", required=True, help="JSON list of phases (see above)")
    parser.add_argument("--deadline-ms", type=float, required=True)
    parser.add_argument("--out", required=True, help=".npz file for the per-request records")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--proc", type=int, default=0, help="index of this process")
    parser.add_argument("--procs", type=int, default=1, help="generator processes in the run")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--max-outstanding", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = asyncio.run(main_async(args))
    except (grpc.RpcError, SluiceClientError, TimeoutError, OSError) as exc:
        print(json.dumps({"fatal": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
