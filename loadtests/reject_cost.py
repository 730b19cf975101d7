"""What turning a request away costs: Sluice's shed path against the bare grpc.aio floor.

    python -m loadtests.reject_cost [--rate 1400] [--duration 6] [--rounds 3] [--model cnn]
        [--batch 8] [--out DIR]

On a machine the load generator shares, every refused request costs CPU on both sides that the
model cannot use (see the CPU model of :mod:`loadtests.overload`). This measures both costs at
one open-loop rate, interleaved per round, medians over rounds:

- **floor**: :mod:`loadtests.ceiling` ``--shed``, a grpc.aio servicer whose ModelInfer only
  sets Sluice's shed trailers and aborts with UNAVAILABLE (the request is still deserialized by
  the generated handler, as in any servicer);
- **sluice**: ``python -m sluice.server serve`` on the bundled repository, every request carrying
  Triton's ``timeout`` parameter of 1 ms (the gRPC deadline stays long, so every request reaches
  the server), which admission cannot meet: each is shed at arrival for its deadline, after
  decoding, validation, routing and admission, as under overload. A few requests without the
  parameter run first so the batcher has measured its speed.

Per server: CPU ms per request (psutil, user + system, over the timed window only), the share of
answers that were UNAVAILABLE (must be ~1), and the generator's CPU ms per request. The
generator is this module run with ``--generate`` in its own process (asyncio, pre-serialized
requests on 4 channels, answers not parsed). Writes ``reject_cost.json`` to ``--out`` (default
``loadtests/results/``). About 15 s per round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from loadtests.models import MODEL_REPOSITORY, ROOT, load_spec, make_inputs
from loadtests.procs import ServerProcess
from loadtests.report import write_json

_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_CHANNELS = 4


def payloads(model: str, batch: int) -> tuple[bytes, bytes]:
    """(warm-up request, request with a 1 ms ``timeout`` parameter), serialized."""
    from sluice.clients.messages import build_request

    inputs = make_inputs(load_spec(model).inputs, batch)
    plain = build_request(model, inputs).SerializeToString()
    doomed = build_request(model, inputs, parameters={"timeout": 1000}).SerializeToString()
    return plain, doomed


async def generate(target: str, payload: bytes, warmup: bytes, rate: float,
                   duration_s: float) -> dict[str, Any]:
    """Send ``payload`` at ``rate`` for ``duration_s`` (open loop); CPU and status counts."""
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(_CHANNELS)]
    methods = [ch.unary_unary(_METHOD) for ch in channels]
    for method in methods:  # connect, and let a model measure its speed
        for _ in range(3):
            try:
                await method(warmup, timeout=10.0)
            except grpc.aio.AioRpcError:
                pass  # the floor refuses these too
    codes: dict[str, int] = {}

    async def one(i: int) -> None:
        try:
            await methods[i % _CHANNELS](payload, timeout=5.0)
            name = "OK"
        except grpc.aio.AioRpcError as exc:
            name = exc.code().name
        codes[name] = codes.get(name, 0) + 1

    print("ready", flush=True)
    sys.stdin.readline()  # the parent has read the server's CPU
    tasks: set[asyncio.Task[None]] = set()
    n = int(rate * duration_s)
    cpu, t0, i = time.process_time(), time.perf_counter(), 0
    while i < n:
        now = time.perf_counter() - t0
        while i < n and i / rate <= now:
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(max(0.0, i / rate - (time.perf_counter() - t0)))
    if tasks:
        await asyncio.wait(tasks, timeout=10.0)
    cpu = time.process_time() - cpu
    for channel in channels:
        await channel.close()
    return {"sent": n, "codes": codes, "generator_ms": 1e3 * cpu / n}


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    gen = subprocess.Popen(
        [sys.executable, "-m", "loadtests.reject_cost", "--generate", server.target,
         "--model", args.model, "--batch", str(args.batch), "--rate", str(args.rate),
         "--duration", str(args.duration)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    assert gen.stdin is not None and gen.stdout is not None
    if gen.stdout.readline().strip() != "ready":
        raise RuntimeError(f"generator failed: {gen.communicate(timeout=30)[1][-2000:]}")
    before = _cpu_s(server.pid)
    gen.stdin.write("go\n")
    gen.stdin.flush()
    out, err = gen.communicate(timeout=args.duration + 60)
    after = _cpu_s(server.pid)
    if gen.returncode != 0:
        raise RuntimeError(f"generator failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["server_ms"] = 1e3 * (after - before) / result["sent"]
    result["shed_share"] = result["codes"].get("UNAVAILABLE", 0) / result["sent"]
    return result


#: The two servers compared: name -> interpreter arguments.
SERVERS = {
    "floor": ["-m", "loadtests.ceiling", "--shed"],
    "sluice": ["-m", "sluice.server", "serve", "--model-repository", str(MODEL_REPOSITORY),
               "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
               "--log-level", "WARNING"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.reject_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1400.0, help="requests/s (open loop)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    parser.add_argument("--generate", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        warmup, doomed = payloads(args.model, args.batch)
        print(json.dumps(asyncio.run(
            generate(args.generate, doomed, warmup, args.rate, args.duration))), flush=True)
        return 0
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "sluice": []}
    for k in range(args.rounds):
        order = list(SERVERS.items())
        for name, command in order if k % 2 == 0 else order[::-1]:
            with ServerProcess(name, command) as server:
                result = measure(server, args)
            runs[name].append(result)
            print(f"round {k + 1} {name:<6}: server {result['server_ms']:.3f} ms/request, "
                  f"generator {result['generator_ms']:.3f} ms, shed {result['shed_share']:.1%} "
                  f"{result['codes']}", flush=True)
    med = {name: {key: statistics.median(r[key] for r in rs)
                  for key in ("server_ms", "generator_ms", "shed_share")}
           for name, rs in runs.items()}
    ratio = med["sluice"]["server_ms"] / med["floor"]["server_ms"]
    print(f"\n{args.model} b{args.batch} at {args.rate:g} req/s, medians of {args.rounds} rounds: "
          f"server CPU per refused request: sluice {med['sluice']['server_ms']:.3f} ms, "
          f"floor (bare grpc.aio) {med['floor']['server_ms']:.3f} ms, ratio {ratio:.2f}; "
          f"generator {med['sluice']['generator_ms']:.3f} ms per request")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "reject_cost.json",
               {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                "medians": med, "sluice_over_floor": ratio})
    print(f"wrote {args.out / 'reject_cost.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
