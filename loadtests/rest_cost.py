"""What one REST infer costs the server in CPU, with a real socket and a client in another
process (issue 17's performance section, measured where throughput figures are noise).

    python -m loadtests.rest_cost [--concurrency 1,64] [--count 5000] [--reps 5] [--rounds 3]
        [--body binary|json] [--against CHECKOUT] [--no-constant]

``loadtests.rest_bench`` compares req/s at concurrency 64; on a shared 2-core machine the
neighbours decide those. CPU time per request does not depend on them much. Each measurement is
a child process that serves ``identity`` (``model_repository/identity``: one CPU instance,
``dynamic_batching``) over REST on 127.0.0.1 (a :class:`sluice.server.app.Server` with
``http_port=0``; gRPC unused) and starts a client process (the standard library only: raw
keep-alive sockets, ``--concurrency`` connections each sending one request after another, the
bytes built once). The client warms up, then per rep the server notes its CPU clocks, lets the
client send ``--count`` requests and notes them again when the client says it is done. Reported
per request, best of ``--reps`` (the best filters preemption):

- **process**: the server process's CPU (every thread: the event loop, the batcher's instance
  thread, onnxruntime);
- **loop**: the event loop thread's alone (where the REST door runs).

The request is what ``perf_analyzer -i http`` sends (``--body binary``: INPUT0 FP32 [1, 16] as
binary data, OUTPUT0 asked for as binary data) or JSON tensors both ways (``--body json``).
``constant`` is :mod:`loadtests.rest_constant`'s aiohttp servicer (the bytes of an answer,
nothing parsed: the HTTP library's own floor) measured the same way; ``--against CHECKOUT``
measures another checkout's Sluice too (a source tree with its ``.ci/pythonpath`` link, e.g.
``git archive main | tar -x -C /tmp/base``). A round runs every side once per concurrency,
interleaved (A B A B); the table shows the median over ``--rounds``. About 4 s per child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_REPOSITORY = ROOT / "model_repository"


def _child_env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout / ".ci" / "pythonpath"), str(ROOT)])
    return env


#: The client: ``host port count reps concurrency body``; talks to its parent on stdin/stdout
#: ("ready" -> "go" -> "done", once per rep). Standard library only, so it costs little.
_CLIENT = r"""
import asyncio, json, sys

host, port, count, reps, concurrency = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
kind = sys.argv[6]
if kind == "binary":
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                    "parameters": {"binary_data_size": 64}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }, separators=(",", ":")).encode()
    body = header + bytes(range(64))
    extra = (f"Inference-Header-Content-Length: {len(header)}\r\n"
             "Content-Type: application/octet-stream\r\n")
else:
    body = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                    "data": [float(i) for i in range(16)]}],
        "outputs": [{"name": "OUTPUT0"}],
    }, separators=(",", ":")).encode()
    extra = "Content-Type: application/json\r\n"
request = (f"POST /v2/models/identity/infer HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def connection(n):
    reader, writer = await asyncio.open_connection(host, port)
    for _ in range(n):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"answer: {head[:200]!r}")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
    writer.close()


async def batch(total):
    share = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(connection(n) for n in share if n))


async def main():
    loop = asyncio.get_running_loop()
    await batch(max(1000, count // 4))
    for _ in range(reps):
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        await batch(count)
        print("done", flush=True)


asyncio.run(main())
"""

#: The server: ``side repository client_args...``; prints its figures as JSON.
_SERVER = r"""
import asyncio, json, socket, sys, tempfile, time
from pathlib import Path

side, repository, client_args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
client_program = sys.stdin.read()


async def drive(port):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", client_program, "127.0.0.1", str(port), *client_args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    count = int(client_args[0])
    best_process = best_loop = float("inf")
    while True:
        line = await proc.stdout.readline()
        if not line:
            break
        assert line == b"ready\n", line
        proc.stdin.write(b"go\n")
        process, loop = time.process_time(), time.thread_time()
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        assert line == b"done\n", line
        best_process = min(best_process, (time.process_time() - process) / count)
        best_loop = min(best_loop, (time.thread_time() - loop) / count)
    if await proc.wait() != 0:
        raise SystemExit(f"the client failed ({proc.returncode})")
    return {"process_us": best_process * 1e6, "loop_us": best_loop * 1e6}


async def sluice():
    from sluice.server.app import Server
    from sluice.server.config.settings import ServerConfig

    with tempfile.TemporaryDirectory(prefix="rest-cost-") as state:
        server = Server(ServerConfig(
            model_repository=repository, grpc_port=0, http_port=0, metrics_port=None,
            state_dir=Path(state), model_control="explicit", startup_models=("identity",),
            log_level="WARNING"))
        await server.start(lambda: None)
        try:
            return await drive(server.rest.port)
        finally:
            await server.stop(1)


async def constant():
    from loadtests import rest_constant

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    serving = asyncio.ensure_future(rest_constant._serve_aiohttp(sock, stop))
    await asyncio.sleep(0.2)
    try:
        return await drive(port)
    finally:
        stop.set()
        await serving


print(json.dumps(asyncio.run(sluice() if side == "sluice" else constant())))
"""


def _measure(checkout: Path, side: str, concurrency: int, args: argparse.Namespace
             ) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _SERVER, side, str(_REPOSITORY), str(args.count), str(args.reps),
         str(concurrency), args.body],
        input=_CLIENT, cwd=ROOT, env=_child_env(checkout), capture_output=True, text=True,
        timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} at c={concurrency} ({checkout}) failed:\n"
                         f"{done.stdout[-1500:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,64",
                        help="comma-separated connection counts (default 1,64)")
    parser.add_argument("--count", type=int, default=5000, help="requests per rep")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--body", choices=("binary", "json"), default="binary")
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout to measure side by side with this one")
    parser.add_argument("--no-constant", action="store_true",
                        help="skip the constant aiohttp servicer")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    sides: dict[str, tuple[Path, str]] = {"sluice": (ROOT, "sluice")}
    if args.against is not None:
        sides["against"] = (args.against.resolve(), "sluice")
    if not args.no_constant:
        sides["constant"] = (ROOT, "constant")
    figures: dict[tuple[int, str], list[dict[str, float]]] = {}
    for index in range(args.rounds):
        order = list(sides) if index % 2 == 0 else list(sides)[::-1]
        for level in levels:
            for label in order:
                checkout, side = sides[label]
                point = _measure(checkout, side, level, args)
                figures.setdefault((level, label), []).append(point)
                print(f"round {index + 1} c={level} {label}: process {point['process_us']:.1f} "
                      f"loop {point['loop_us']:.1f} us/req", file=sys.stderr, flush=True)
    print(f"server CPU us per REST infer on identity ({args.body} tensors; median over "
          f"{args.rounds} rounds of best-of-{args.reps} x {args.count})")
    print(f"{'c':>4s} {'side':10s} {'process':>9s} {'loop':>9s}")
    for level in levels:
        for label in sides:
            runs = figures[(level, label)]
            print(f"{level:4d} {label:10s} "
                  f"{statistics.median(r['process_us'] for r in runs):9.1f} "
                  f"{statistics.median(r['loop_us'] for r in runs):9.1f}")
    if "against" in sides:
        for level in levels:
            pairs = zip(figures[(level, "against")], figures[(level, "sluice")], strict=True)
            print(f"c={level}: against -> this checkout (process us) per round: "
                  + ", ".join(f"{a['process_us']:.1f} -> {b['process_us']:.1f}"
                              for a, b in pairs))


if __name__ == "__main__":
    main()
