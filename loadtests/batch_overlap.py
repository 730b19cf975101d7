"""Where a ``cnn`` batch job's time goes beyond onnxruntime, measured side by side in one process:
onnxruntime alone on rows in memory (the ceiling, as :mod:`loadtests.batch_bench` runs it), the
job reading each chunk whole before predicting it (``piece_rows`` None: how ``sluice batch``
worked before), and the job as it runs now (the model starts on the first piece of rows while
the next is read). Rounds interleave the three (A B C, C B A, ...), so a burst of load on a
shared machine hits each alike; per round, the ceiling's seconds over the job's
(``Summary.seconds``: read, convert, predict, write parts, assemble), for wall time and for
process CPU time (every thread: ORT's pool, the reader, the writer), and the share of the job's
wall time spent outside the model's runs (waiting for rows, writing, assembling: load slows the
model and the reading alike, so this share is steadier than the ratios on a shared machine).
Medians and the best round.

    python -m loadtests.batch_overlap [--rows 20000] [--batch 256] [--chunk-rows 8192] [--rounds 4]

The measuring program runs in a child process on this checkout (load tests import no server
module themselves).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROGRAM = r"""
import asyncio, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.server.app import BUNDLED_REPOSITORY, make_backend
from sluice.server.batch.job import JobSpec, run_job
from sluice.server.batch.local import LocalPredictor

rows, batch, chunk_rows, rounds = map(int, sys.argv[1:5])
x = np.random.default_rng(0).standard_normal((rows, 3, 32, 32), dtype=np.float32)
options = ort.SessionOptions()  # the server's options for cnn (default threads, no spinning)
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(str(BUNDLED_REPOSITORY / "cnn" / "1" / "model.onnx"), options,
                               providers=["CPUExecutionProvider"])
session.run(["logits"], {"image": x[:batch]})
predictor = LocalPredictor(BUNDLED_REPOSITORY, "cnn", make_backend, batch_rows=batch)
pieces = predictor.piece_rows
in_model = [0.0]  # seconds the job spent in the model's runs (its instance thread)
model_run = predictor.backend.run


def timed_run(instance, inputs):
    started = time.perf_counter()
    try:
        return model_run(instance, inputs)
    finally:
        in_model[0] += time.perf_counter() - started


predictor.backend.run = timed_run


def ceiling():
    for start in range(0, rows, batch):
        session.run(["logits"], {"image": x[start:start + batch]})


with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp)
    images = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3 * 32 * 32)
    pq.write_table(pa.table({"id": np.arange(rows), "image": images}), folder / "cnn.parquet",
                   row_group_size=8192)

    def job(piece_rows):
        predictor.piece_rows = piece_rows
        spec = JobSpec(input=folder / "cnn.parquet", output=folder / "out.parquet",
                       rejects=folder / "rejects.csv", key="id", chunk_rows=chunk_rows,
                       restart=True)
        return asyncio.run(run_job(spec, predictor)).seconds

    sides = [("ceiling", ceiling), ("whole chunks", lambda: job(None)),
             (f"pieces of {pieces} rows", lambda: job(pieces))]
    got = {name: [] for name, _ in sides}
    outside = {name: [] for name, _ in sides[1:]}
    for round_ in range(rounds):
        for name, run in sides if round_ % 2 == 0 else sides[::-1]:
            cpu, wall = time.process_time(), time.perf_counter()
            in_model[0] = 0.0
            seconds = run()
            got[name].append((seconds or time.perf_counter() - wall, time.process_time() - cpu))
            if name in outside:
                outside[name].append(1 - in_model[0] / seconds)
        print(f"round {round_}: " + "; ".join(f"{name} {v[-1][0]:.2f} s wall, {v[-1][1]:.2f} s cpu"
                                             for name, v in got.items()) + "; outside the model "
              + ", ".join(f"{v[-1]:.1%}" for v in outside.values()), flush=True)
predictor.close()
base = got["ceiling"]
for name, values in list(got.items())[1:]:
    wall = [c[0] / j[0] for c, j in zip(base, values)]
    cpu = [c[1] / j[1] for c, j in zip(base, values)]
    print(f"{name}: of onnxruntime alone, wall {statistics.median(wall):.3f} median "
          f"({max(wall):.3f} best round), cpu {statistics.median(cpu):.3f} median "
          f"({max(cpu):.3f} best round); the job's wall time outside the model's runs "
          f"{statistics.median(outside[name]):.1%} median ({min(outside[name]):.1%} least)")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / ".ci" / "pythonpath"), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(args.rows), str(args.batch), str(args.chunk_rows),
         str(args.rounds)], cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
