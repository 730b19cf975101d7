"""Where the c=1 latency of TLS and tokens goes: sequential calls, side by side, interleaved.

    python -m loadtests.auth_latency [--rounds R] [--calls N] [--clients bare,client]
        [--servers plain,tls,tokens,tls_tokens,ceiling,ceiling_tls] [--perf-analyzer] [--out DIR]

Issue 14 allows TLS and token checks to raise the c=1 p50 of ``identity`` by at most 100 us.
:mod:`loadtests.security_bench` measures that end to end (loadgen subprocesses, 5 s windows);
on a shared machine its c=1 difference is mostly noise, and it cannot say whose time it is.
This one splits it: it starts every server at once and measures, round after round, a burst of
``--calls`` sequential ModelInfer calls from one process on each (server, client) pair, the
order rotated each round, and for every burst also the CPU both sides spent:

* servers (``sluice serve``, identity only): ``plain``; ``tls`` (``--tls-cert/--tls-key``);
  ``tokens`` (``--tokens``, plaintext: allowed on loopback); ``tls_tokens`` (both: the issue's
  case); and grpc's own share without Sluice: ``ceiling`` and ``ceiling_tls``
  (:mod:`loadtests.ceiling`, a bare grpc.aio servicer answering a constant; the clients send
  them the token too, which they ignore: ``ceiling/bare`` against ``ceiling/bare_interceptor``
  is the client interceptor's cost alone);
* clients: ``client`` is :class:`sluice.clients.AsyncClient` ``infer_request`` (what
  :mod:`loadtests.loadgen` and so security_bench use: the token on a channel interceptor);
  ``bare`` is a grpc.aio channel with no interceptor sending pre-serialized bytes, the token as
  per-call metadata: the least a Python client does; ``bare_interceptor`` is the same with the
  token on a grpc.aio channel interceptor (:func:`sluice.clients.auth.aio_interceptors`), which
  makes grpc.aio run every call through its intercepted-call machinery; ``client_interceptor``
  is AsyncClient with its channel swapped for such an intercepted one (how it sent the token
  before it sent per-call metadata: the before of that change, measured beside the after).

Per pair it reports the p50 of every call (pooled), the median of the bursts' p50s, and CPU per
call: the client process's (``time.process_time``, every thread of this process), its event
loop thread's (``time.thread_time``: where grpc.aio's Python and the client's code run) and the
server's (the sum of ``/proc/PID/task/*/schedstat`` run times: every thread, in ns, so a burst
is resolved exactly), then the differences against ``plain`` with the same client. CPU is the
figure noise does not move much (preemption adds wall time, not CPU). ``--perf-analyzer`` adds
Triton's C++ perf_analyzer at c=1 on plain, tls, ceiling and ceiling_tls (it cannot send a
token: its ``-H`` is ignored for gRPC). Writes ``auth_latency.json`` to ``--out`` (default
``loadtests/results/``, git-ignored). Run it unniced: best-of and medians filter preemption.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests import perfanalyzer
from loadtests.models import MODEL_REPOSITORY, ROOT, load_spec, make_inputs
from loadtests.procs import ServerProcess
from loadtests.security_bench import _make_token
from sluice.clients import AsyncClient
from sluice.clients.auth import aio_interceptors, bearer_metadata
from sluice.clients.messages import build_request, channel_options
from sluice.clients.tls import open_aio_channel, tls_credentials
from sluice.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub

SERVERS = ("plain", "tls", "tokens", "tls_tokens", "ceiling", "ceiling_tls")
CLIENTS = ("bare", "bare_interceptor", "client", "client_interceptor")
_METHOD = "/inference.GRPCInferenceService/ModelInfer"

Call = Callable[[], Awaitable[Any]]
#: The report's columns: pooled p50, median burst p50, CPU of the client process, of its loop
#: thread and of the server (each the median and the best burst).
_COLUMNS = ("p50_us", "median_burst_p50_us", "client_cpu_us", "best_client_cpu_us",
            "loop_cpu_us", "best_loop_cpu_us", "server_cpu_us", "best_server_cpu_us")
_HEADS = ("p50", "burst p50", "client cpu", "best", "loop cpu", "best", "server cpu", "best")


def _sluice_args(extra: list[str]) -> list[str]:
    return ["-m", "sluice.server", "serve", "--model-repository", str(MODEL_REPOSITORY),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1", "--http-port", "-1",
            "--model-control", "explicit", "--load-model", "identity",
            "--log-level", "WARNING", *extra]


def server_cpu_ns(pid: int) -> int:
    """Run time of every thread of process ``pid`` so far, in ns (schedstat's first field)."""
    total = 0
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between the listing and the read
    return total


class Pair:
    """One (server, client) combination and what its bursts measured."""

    def __init__(self, server: str, client: str, pid: int, call: Call,
                 close: Callable[[], Awaitable[None]]) -> None:
        self.server, self.client, self.pid = server, client, pid
        self.call, self.close = call, close
        self.latencies: list[np.ndarray] = []
        #: Per burst: CPU seconds per call of this process, of its event loop's thread (where
        #: grpc.aio's Python runs), and of the server.
        self.client_cpu: list[float] = []
        self.loop_cpu: list[float] = []
        self.server_cpu: list[float] = []

    @property
    def name(self) -> str:
        return f"{self.server}/{self.client}"

    async def burst(self, calls: int) -> None:
        call, clock = self.call, time.perf_counter
        out = np.empty(calls, dtype=np.float64)
        server_before, client_before = server_cpu_ns(self.pid), time.process_time()
        loop_before = time.thread_time()
        for i in range(calls):
            sent = clock()
            await call()
            out[i] = clock() - sent
        self.loop_cpu.append((time.thread_time() - loop_before) / calls)
        self.client_cpu.append((time.process_time() - client_before) / calls)
        self.server_cpu.append((server_cpu_ns(self.pid) - server_before) / 1e9 / calls)
        self.latencies.append(out)

    def summary(self) -> dict[str, float]:
        pooled = np.concatenate(self.latencies)
        return {
            "p50_us": float(np.median(pooled)) * 1e6,
            "median_burst_p50_us": statistics.median(float(np.median(b)) for b in
                                                     self.latencies) * 1e6,
            "best_burst_p50_us": min(float(np.median(b)) for b in self.latencies) * 1e6,
            "client_cpu_us": statistics.median(self.client_cpu) * 1e6,
            "server_cpu_us": statistics.median(self.server_cpu) * 1e6,
            "best_client_cpu_us": min(self.client_cpu) * 1e6,
            "loop_cpu_us": statistics.median(self.loop_cpu) * 1e6,
            "best_loop_cpu_us": min(self.loop_cpu) * 1e6,
            "best_server_cpu_us": min(self.server_cpu) * 1e6,
            "calls": int(sum(len(b) for b in self.latencies)),
        }


def _client_pair(server: str, kind: str, proc: Any, request: Any) -> Pair:
    """``kind``'s calls of ``request`` to ``proc`` (a ServerProcess, or anything with its
    ``target``, ``credentials``, ``token`` and ``pid``)."""
    if kind.startswith("client"):
        client = AsyncClient(proc.target, timeout=30.0, retries=0, credentials=proc.credentials,
                             token=proc.token)
        if kind == "client_interceptor":  # the token as AsyncClient sent it before: interceptor
            channel = open_aio_channel(proc.target, channel_options(None), proc.credentials,
                                       aio_interceptors(proc.token))
            client._channel, client._stub_instance = channel, GRPCInferenceServiceStub(channel)
        infer = client.infer_request

        async def call() -> None:
            await infer(request)

        return Pair(server, kind, proc.pid, call, client.close)
    on_channel = kind == "bare_interceptor"
    channel = open_aio_channel(proc.target, channel_options(None), proc.credentials,
                               aio_interceptors(proc.token) if on_channel else None)
    method = channel.unary_unary(_METHOD)  # bytes in, bytes out: no (de)serializer
    payload = request.SerializeToString()
    metadata = bearer_metadata(proc.token) if proc.token and not on_channel else None

    async def bare() -> None:
        await method(payload, timeout=30.0, metadata=metadata)

    return Pair(server, kind, proc.pid, bare, channel.close)


async def _measure(procs: dict[str, ServerProcess], clients: list[str], rounds: int,
                   calls: int) -> list[Pair]:
    spec = load_spec("identity")
    request = build_request("identity", make_inputs(spec.inputs, 1, 0))
    pairs = [_client_pair(server, kind, proc, request)
             for server, proc in procs.items() for kind in clients]
    try:
        for pair in pairs:  # connect (handshake), warm both sides
            for _ in range(200):
                await pair.call()
        for round_no in range(rounds):
            shift = round_no % len(pairs)
            order = pairs[shift:] + pairs[:shift]
            if round_no % 2:
                order.reverse()
            for pair in order:
                await pair.burst(calls)
            _log(f"round {round_no + 1}/{rounds}: " + ", ".join(
                f"{p.name} {np.median(p.latencies[-1]) * 1e6:.0f}" for p in pairs))
    finally:
        for pair in pairs:
            await pair.close()
    return pairs


def _perf_analyzer(procs: dict[str, ServerProcess], ca: str, rounds: int,
                   duration_s: float) -> dict[str, Any]:
    """perf_analyzer at c=1 on the servers it can reach (no token), interleaved per round."""
    found: dict[str, list[float]] = {}
    names = [n for n in ("plain", "tls", "ceiling", "ceiling_tls") if n in procs]
    for round_no in range(rounds):
        for name in names if round_no % 2 == 0 else names[::-1]:
            extra = ["--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", ca] \
                if name.endswith("tls") else []
            point = perfanalyzer.run(target=procs[name].target, model="identity",
                                     concurrency=1, batch=1, streaming=False,
                                     duration_s=duration_s, stability_percent=100,
                                     extra_args=extra)
            if "error" in point:
                return {"error": point["error"]}
            found.setdefault(name, []).append(point["p50_ms"] * 1000)
            _log(f"perf_analyzer round {round_no + 1} {name}: p50 {point['p50_ms'] * 1000:.0f}")
    return {name: {"p50_us_rounds": v, "median_p50_us": statistics.median(v)}
            for name, v in found.items()}


def _log(text: str) -> None:
    print(f"[auth_latency] {text}", flush=True)


#: What starts a server and how a client reaches it: argv (after the interpreter), TLS
#: credentials (None: plaintext) and the token clients send.
Spec = tuple[list[str], grpc.ChannelCredentials | None, str | None]


def server_specs(directory: Path) -> tuple[dict[str, Spec], Path]:
    """Every server of :data:`SERVERS`, with a throwaway CA, server certificate and tokens
    file (a token with scopes infer and metadata) made in ``directory``; and the CA's PEM.
    Clients send the token to ``tokens``, ``tls_tokens`` and the ceilings (which ignore it)."""
    from tests.support.certs import CertificateAuthority  # the test extra's cryptography

    ca = CertificateAuthority.create(directory / "ca")
    issued = ca.issue("server")
    credentials = tls_credentials(ca.cert)
    token = _make_token(directory)
    tls_flags = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
    token_flags = ["--tokens", str(directory / "tokens.json")]
    return {
        "plain": (_sluice_args([]), None, None),
        "tls": (_sluice_args(tls_flags), credentials, None),
        "tokens": (_sluice_args(token_flags), None, token),
        "tls_tokens": (_sluice_args(tls_flags + token_flags), credentials, token),
        "ceiling": (["-m", "loadtests.ceiling"], None, token),
        "ceiling_tls": (["-m", "loadtests.ceiling", *tls_flags], credentials, token),
    }, ca.cert


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sluice-auth-latency-") as tmp:
        specs, ca = server_specs(Path(tmp))
        procs: dict[str, ServerProcess] = {}
        try:
            for name in args.servers:
                argv, creds, token = specs[name]
                procs[name] = ServerProcess(name, argv, credentials=creds,
                                            token=token).__enter__()
            _log("servers: " + ", ".join(f"{n} {p.target}" for n, p in procs.items()))
            pairs = asyncio.run(_measure(procs, args.clients, args.rounds, args.calls))
            pa = (_perf_analyzer(procs, str(ca), args.pa_rounds, args.pa_duration)
                  if args.perf_analyzer else None)
        finally:
            for proc in procs.values():
                proc.stop()
    return _report(args, pairs, pa)


def _report(args: argparse.Namespace, pairs: list[Pair], pa: dict[str, Any] | None
            ) -> dict[str, Any]:
    table = {pair.name: pair.summary() for pair in pairs}
    rises: dict[str, dict[str, float]] = {}
    for pair in pairs:
        base = table.get(f"{'ceiling' if pair.server.startswith('ceiling') else 'plain'}/"
                         f"{pair.client}")
        if base is None or pair.name in (f"plain/{pair.client}", f"ceiling/{pair.client}"):
            continue
        mine = table[pair.name]
        rises[pair.name] = {key: mine[key] - base[key] for key in _COLUMNS}
    return {"settings": {k: v for k, v in vars(args).items() if k != "out"},
            "load_average": os.getloadavg(), "pairs": table, "rises": rises,
            "perf_analyzer": pa}


def print_report(payload: dict[str, Any]) -> None:
    print(f"\n{'us per call':28}" + "".join(f"{head:>11}" for head in _HEADS))
    for name, row in payload["pairs"].items():
        print(f"{name:28}" + "".join(f"{row[key]:>11.0f}" for key in _COLUMNS))
    print("\nrise over plain (ceiling_tls over ceiling), same client:")
    for name, row in payload["rises"].items():
        print(f"{name:28}" + "".join(f"{row[key]:>+11.0f}" for key in _COLUMNS))
    pa = payload.get("perf_analyzer")
    if pa:
        print("\nperf_analyzer c=1 p50 (median of rounds, us):",
              {k: round(v["median_p50_us"]) for k, v in pa.items()} if "error" not in pa
              else pa["error"])
    print(f"load average {payload['load_average']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.auth_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="rounds (20)")
    parser.add_argument("--calls", type=int, default=300, help="sequential calls a burst (300)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated, of {','.join(SERVERS)}")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help=f"comma-separated, of {','.join(CLIENTS)}")
    parser.add_argument("--perf-analyzer", action="store_true",
                        help="also perf_analyzer c=1 on plain, tls, ceiling, ceiling_tls")
    parser.add_argument("--pa-rounds", type=int, default=4, help="perf_analyzer rounds (4)")
    parser.add_argument("--pa-duration", type=float, default=2.0,
                        help="perf_analyzer window seconds (2)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.clients = [c for c in args.clients.split(",") if c]
    if not set(args.servers) <= set(SERVERS) or not set(args.clients) <= set(CLIENTS):
        parser.error(f"servers among {SERVERS}, clients among {CLIENTS}")
    payload = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auth_latency.json").write_text(json.dumps(payload, indent=2))
    print_report(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
