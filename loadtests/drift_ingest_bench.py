"""What drift's intake costs the drift thread: the kernels that code each sampled value of cnn
(3,073 columns: 3x32x32 pixels and the predicted class), called as the server calls them.

    python -m loadtests.drift_ingest_bench [--checkout DIR ...] [--rounds 5] [--drains 4]
        [--requests 11] [--out DIR]

A reference profile of the bundled ``cnn`` is made by ``sluice profile`` from 2,000 random
rows (as :mod:`loadtests.monitoring_overhead` makes it). For each checkout, a subprocess
attaches it to a ``DriftMonitor`` sampling every request, hands it ``--drains`` drains of
``--requests`` finished 8-row requests each (what the hub's thread hands over per second at
~450 requests/s and the default 10% sample: ~11 a drain, 4 drains a second), then times the
drift thread's CPU (``time.thread_time``) for one intake, paced as in the server but with no
sleep (``DutyCycle(1.0)``): each value coded once into the window's ring, and the oldest rows
evicted once the ring of 5,000 rows is full. Two kinds of rows:

- **varied**: every row drawn anew (standard normal), as real traffic is;
- **repeated**: 8 distinct rows (standard normal) sent again and again;
- **perf_analyzer**: what perf_analyzer sends (the load :mod:`loadtests.monitoring_overhead`
  measures with), checked by logging cnn's inputs under it: one row of random bytes read as
  float32 for every row of every request (~0.5% not finite, half the values beyond +-4).

Per checkout and kind: the median over ``--rounds`` of the best of 7 intakes, in ns per value
and in us of drift-thread CPU per cnn request at the default 10% sample. Rounds interleave the
checkouts (the order reversed every other round). Writes ``drift_ingest_bench.json`` to
``--out`` (default ``loadtests/results/``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.models import ROOT
from loadtests.monitor_cost import add_checkout_option, checkout_run
from loadtests.monitoring_overhead import build
from loadtests.report import write_json

_PROGRAM = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from sluice.kernels import drift_codes
from sluice.server.config.drift import DriftSettings
from sluice.server.config.pbtxt import read_model_config
from sluice.server.monitoring.drift import DriftMonitor
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.pacing import DutyCycle
from sluice.server.monitoring.profile_load import load_profile

model_dir, kind = Path(sys.argv[1]), sys.argv[2]
drains, per_drain = int(sys.argv[3]), int(sys.argv[4])
config, _ = read_model_config(model_dir, "cnn")
profile = load_profile(config, model_dir / "1")
monitor = DriftMonitor(MonitorHub(), drift_codes, seed=0, duty=DutyCycle(1.0))
monitor.attach("cnn", 1, profile, DriftSettings(sample=1.0))
rng = np.random.default_rng(0)
fixed = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
if kind == "perf_analyzer":
    fixed = np.repeat(np.frombuffer(rng.bytes(3 * 32 * 32 * 4), dtype=np.float32)
                      .reshape(1, 3, 32, 32), 8, axis=0)
logits = rng.standard_normal((8, 10)).astype(np.float32)

def intake():
    for _ in range(drains):
        images = [fixed if kind != "varied" else
                  rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
                  for _ in range(per_drain)]
        monitor.on_finished([Finished(f"r{i}", 0.0, "cnn", 1, "", "", {"logits": logits},
                                      {"image": x}, 1e-3) for i, x in enumerate(images)])
    started = time.thread_time()
    monitor.intake_now()
    return time.thread_time() - started

for _ in range(8):  # the ring (5,000 rows) fills: later intakes evict as many rows as they code
    intake()
values = drains * per_drain * 8 * 3073
best = min(intake() for _ in range(7))
print(json.dumps({"ns_per_value": best / values * 1e9,
                  "us_per_request_at_10pct": best / (drains * per_drain) * 0.1 * 1e6}))
"""

KINDS = ("varied", "repeated", "perf_analyzer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.drift_ingest_bench",
                                     description=__doc__.split("\n\n")[0])
    add_checkout_option(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drains", type=int, default=4)
    parser.add_argument("--requests", type=int, default=11)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    checkouts = [c.resolve() for c in (args.checkout or [ROOT])]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-drift-ingest-") as tmp:
        model_dir = build(Path(tmp), True) / "cnn"
        for n in range(args.rounds):
            order = [(k, c) for k in KINDS for c in checkouts]
            for kind, checkout in order if n % 2 == 0 else order[::-1]:
                got = checkout_run(checkout, _PROGRAM, str(model_dir), kind, str(args.drains),
                                   str(args.requests))
                runs.append({"round": n, "kind": kind, "checkout": str(checkout), **got})
                shown = (f"{got['ns_per_value']:6.1f} ns/value" if "error" not in got
                         else "error: " + got["error"].splitlines()[-1][:150])
                print(f"round {n} {kind:13} {checkout}: {shown}", flush=True)
    print(f"\ndrift intake, cnn, {args.drains} drains of {args.requests} 8-row requests an "
          f"intake: median over {args.rounds} rounds of the best of 7")
    summary = []
    for kind in KINDS:
        for checkout in checkouts:
            ok = [r for r in runs if r["kind"] == kind and r["checkout"] == str(checkout)
                  and "error" not in r]
            if not ok:
                continue
            row = {"kind": kind, "checkout": str(checkout),
                   "ns_per_value": statistics.median(r["ns_per_value"] for r in ok),
                   "us_per_request_at_10pct": statistics.median(
                       r["us_per_request_at_10pct"] for r in ok)}
            summary.append(row)
            print(f"{kind:13} {str(checkout)[-40:]:>40}: {row['ns_per_value']:6.1f} ns/value, "
                  f"{row['us_per_request_at_10pct']:6.1f} us per cnn request at 10%")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "drift_ingest_bench.json",
               {"runs": runs, "summary": summary, "load_average": os.getloadavg(),
                "settings": {k: (str(v) if isinstance(v, Path) else v)
                             for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
