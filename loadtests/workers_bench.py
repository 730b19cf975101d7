"""``--workers 2`` against ``--workers 1``: closed-loop throughput on one small model.

    python -m loadtests.workers_bench [--model identity] [--batch 1] [--concurrency 64]
        [--procs 4] [--rounds 3] [--duration 3] [--out DIR]

Starts a server with one worker and one with two (each on its own free port, the bundled
repository), then in interleaved rounds (W1, W2, W1, W2, ...) drives each with ``--procs``
generator processes sharing ``--concurrency`` calls in flight. The kernel spreads connections,
not requests, over SO_REUSEPORT workers, and one generator process holds one connection: with
one process, one worker gets all the load, so the default is several. On this 2-core machine the
generators share the cores with the workers: the ratio says what a second worker buys when the
box is also the client, not on a dedicated server. Prints per-round req/s and p50/p99, and the
median of the per-round ratios W2 / W1; writes ``workers.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from loadtests.bench import machine_info
from loadtests.models import MODEL_REPOSITORY, ROOT
from loadtests.overload import input_specs
from loadtests.procs import ServerProcess, run_load
from loadtests.report import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="identity")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--procs", type=int, default=4, help="generator processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers = {
            n: stack.enter_context(ServerProcess(f"sluice-w{n}", [
                "-m", "sluice.server", "serve", "--model-repository", str(MODEL_REPOSITORY),
                "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
                "--log-level", "WARNING", "--workers", str(n),
            ]))
            for n in (1, 2)
        }
        specs = input_specs(servers[1].target, args.model)
        for r in range(args.rounds):
            row: dict[str, Any] = {"round": r + 1}
            for n, server in servers.items():
                time.sleep(0.5)  # let the other server's threads go quiet
                result = run_load(
                    label=f"workers={n}", target=server.target, model=args.model, inputs=specs,
                    batch=args.batch, concurrency=args.concurrency, procs=args.procs,
                    duration_s=args.duration, warmup_s=1.0,
                )
                if result.errors:
                    raise SystemExit(f"workers={n}: {result.errors} errors: {result.first_error}")
                row[f"w{n}"] = dataclasses.asdict(result)
                print(f"round {r + 1} workers={n}: {result.req_s:8,.0f} req/s  p50 "
                      f"{result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms", flush=True)
            row["ratio"] = row["w2"]["req_s"] / row["w1"]["req_s"]
            rounds.append(row)
    ratio = statistics.median(r["ratio"] for r in rounds)
    each = ", ".join(format(r["ratio"], ".2f") for r in rounds)
    print(f"\n{args.model} batch {args.batch}, concurrency {args.concurrency} over {args.procs} "
          f"generator processes: --workers 2 / --workers 1 = {ratio:.2f} (median of "
          f"{len(rounds)} rounds: {each})")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "workers.json", {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(), "rounds": rounds, "ratio_median": ratio,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
