"""loadtests/peers.py runs end to end: ``--quick`` on identity at one concurrency gives every
server a figure, and the ratios and the overhead in peers.json are computed from those figures
(a smoke test of the harness, about 15 s; perf_analyzer must be on PATH, CI does not install it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("perf_analyzer") is None,
                    reason="perf_analyzer is not on PATH (Triton's client SDK; CI lacks it)")
def test_peers_quick_run_on_identity(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.peers", "--quick", "--models", "identity",
         "--concurrency", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    payload = json.loads((tmp_path / "peers.json").read_text())
    runs = {run["server"]: run for run in payload["runs"]}
    assert sorted(runs) == ["bare", "inline_ort", "sluice"]  # MLServer: no interpreter given
    assert payload["notes"] == ["MLServer skipped: no --mlserver-python given"]
    for run in runs.values():
        assert "error" not in run, run
        assert run["req_s"] > 0 and run["p50_ms"] > 0
    [row] = payload["summary"]["rows"]
    assert (row["model"], row["concurrency"]) == ("identity", 1)
    assert row["req_s"] == {**{k: r["req_s"] for k, r in runs.items()}, "mlserver": None}
    assert row["sluice_over_bare"] == pytest.approx(runs["sluice"]["req_s"] / runs["bare"]["req_s"])
    assert row["sluice_over_inline"] == pytest.approx(
        runs["sluice"]["req_s"] / runs["inline_ort"]["req_s"])
    [ort] = payload["ort"]
    assert ort["p50_ms"] > 0
    overhead = payload["summary"]["overhead_us"]["identity"]
    assert overhead["value"] == pytest.approx(
        (runs["sluice"]["p50_ms"] - runs["bare"]["p50_ms"] - ort["p50_ms"]) * 1e3)
    assert "Sluice/bare" in done.stdout and "p50 at concurrency 1" in done.stdout
