"""loadtests/inline_cost.py runs end to end: its child measures a real server's ModelInfer and
the model's own onnxruntime run, and the table it prints says what Sluice adds (a smoke test of
the harness; about 15 s)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_inline_cost_quick_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.inline_cost", "--models", "identity", "--rounds", "1",
         "--count", "200", "--reps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("identity"))
    model_us, sluice_us, added_us = (float(x) for x in re.findall(r"[-\d.]+", row)[:3])
    # Sluice's request includes the model's run, so it costs more than the run alone.
    assert 0 < model_us < sluice_us < 100_000 and added_us == pytest.approx(sluice_us - model_us,
                                                                           abs=0.11)
