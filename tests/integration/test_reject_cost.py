"""loadtests/reject_cost.py runs end to end: both servers refuse every request, and the figures
it reports are CPU per request (a smoke test of the harness; about 10 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reject_cost_quick_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.reject_cost", "--rounds", "1", "--duration", "1",
         "--rate", "100", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "reject_cost.json").read_text())
    for name in ("floor", "sluice"):
        [run] = payload["runs"][name]
        assert run["sent"] == 100
        assert run["codes"] == {"UNAVAILABLE": 100}  # every one shed, none computed or lost
        assert 0 < run["server_ms"] < 1000 and 0 < run["generator_ms"] < 1000
    assert payload["sluice_over_floor"] > 0
