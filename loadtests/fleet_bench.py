"""Fleet state in etcd (issue 15's performance section), on one machine:

1. **Propagation**: a real etcd and three ``sluice serve --state-store etcd://...`` replicas;
   ``--changes`` switches of ``digits`` (alternating versions 1 and 2), each through the next
   replica in turn; for each, the time from sending the admin call to the moment the last of
   the three replicas reports the new routes (each replica polled by its own thread, every
   ``--poll-ms``). p50 / p99 / max.
2. **Per-request cost**: c=1 p50 of ``identity`` (switched to version 1, so requests are routed
   by a routing table) on one replica of the etcd fleet and on a server with the file store,
   interleaved rounds (``--repeats``), medians of the rounds.

    python -m loadtests.fleet_bench [--changes 100] [--repeats 3] [--duration 5] [--json FILE]

Needs Debian's etcd (tests/support/etcd.py finds it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtests.models import load_spec
from loadtests.procs import ServerProcess, run_load
from sluice.clients.admin import AdminClient


def _server_args(extra: list[str]) -> list[str]:
    return ["-m", "sluice.server", "serve", "--grpc-port", "0", "--metrics-port", "-1",
            "--log-level", "WARNING", "--model-control", "explicit", "--load-model", "digits",
            "--load-model", "identity", *extra]


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _propagation(admins: list[AdminClient], changes: int, poll_s: float) -> list[float]:
    """Seconds from each change's call to the last replica reporting it."""
    took = []
    for n in range(changes):
        version = 1 + n % 2
        want = [{"arm": "stable", "version": version, "weight": 1.0}]
        seen = [0.0] * len(admins)

        def watch(i: int, want: list[dict[str, Any]] = want, seen: list[float] = seen) -> None:
            while admins[i].deployment("digits")["routes"] != want:
                time.sleep(poll_s)
            seen[i] = time.monotonic()

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(len(admins))]
        started = time.monotonic()
        admins[n % len(admins)].switch("digits", version, reason=f"bench {n}")
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        took.append(max(seen) - started)
    return took


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.etcd import start_etcd  # the test harness: a real etcd on free ports

    spec = load_spec("identity")
    with tempfile.TemporaryDirectory(prefix="sluice-fleet-bench-") as tmp:
        etcd = start_etcd(Path(tmp) / "etcd")
        try:
            store = ["--state-store", etcd.state_store("bench")]
            with (
                ServerProcess("replica0", _server_args(store)) as r0,
                ServerProcess("replica1", _server_args(store)) as r1,
                ServerProcess("replica2", _server_args(store)) as r2,
                ServerProcess("file", _server_args(["--state-dir", str(Path(tmp) / "state")]))
                as plain,
            ):
                admins = [AdminClient(r.target) for r in (r0, r1, r2)]
                try:
                    admins[0].switch("identity", 1, reason="routed by a table")
                    with AdminClient(plain.target) as admin:
                        admin.switch("identity", 1, reason="routed by a table")
                    took = _propagation(admins, args.changes, args.poll_ms / 1000)
                finally:
                    for admin in admins:
                        admin.close()
                _log(f"propagation over {len(took)} changes: p50 "
                     f"{_quantile(took, 0.5) * 1e3:.1f} ms, p99 {_quantile(took, 0.99) * 1e3:.1f}"
                     f" ms, max {max(took) * 1e3:.1f} ms")
                p50: dict[str, list[float]] = {"etcd": [], "file": []}
                for round_no in range(args.repeats):
                    order = [("etcd", r0), ("file", plain)]
                    for side, server in order if round_no % 2 == 0 else order[::-1]:
                        result = run_load(label=side, target=server.target, model="identity",
                                          inputs=spec.inputs, batch=1, concurrency=1,
                                          duration_s=args.duration, warmup_s=1.0)
                        p50[side].append(result.p50_ms)
                        _log(f"round {round_no + 1} {side}: c=1 p50 "
                             f"{result.p50_ms * 1000:.0f} us, errors {result.errors}")
        finally:
            etcd.stop()
    return {
        "changes": len(took),
        "propagation_ms": {"p50": _quantile(took, 0.5) * 1e3, "p99": _quantile(took, 0.99) * 1e3,
                           "max": max(took) * 1e3},
        "c1_p50_us": {side: statistics.median(v) * 1000 for side, v in p50.items()},
        "c1_p50_rounds_us": {side: [x * 1000 for x in v] for side, v in p50.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--poll-ms", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    payload = run(args)
    text = json.dumps(payload, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
