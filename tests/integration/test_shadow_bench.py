"""loadtests/shadow_bench.py runs end to end: shadow toggled per phase, a twin candidate agrees,
routing answers from the arms it should. A smoke test of the harness, not of the targets
(about 10 s: one A and one B phase of the digits model at a given capacity, one short routing
round)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_shadow_bench_quick_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            # digits, not the default cnn: copies compute only in the live version's idle
            # time on a SCHED_IDLE thread, which a busy machine running cnn at 80 req/s never
            # leaves, so every copy would be shed and nothing compared
            sys.executable, "-m", "loadtests.shadow_bench", "--quick", "--rounds", "1",
            "--model", "digits", "--batch", "1", "--capacity", "80",
            "--routing-requests", "30", "--routing-rounds", "1",
            "--out", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "shadow_bench.json").read_text())
    phases = {p["name"]: p for p in payload["shadow"]["phases"]}
    assert list(phases) == ["warm-up", "A1", "B1"]
    assert phases["A1"]["shadow"] is None
    assert phases["A1"]["ok"] > 0 and phases["B1"]["ok"] > 0
    report = phases["B1"]["shadow"]
    assert report["mirrored"] > 0 and report["candidate_errors"] == 0
    assert report["compared"] > 0 and report["agreement"] == 1.0
    assert phases["B1"]["server_v1"]["requests"] > 0
    answered = {r["variant"]: set(r["answered"]) for r in payload["routing"]["rounds"]}
    assert answered["plain"] == answered["plain2"] == {"v2 arm -"}
    assert answered["routed"] <= {"v1 arm v1", "v2 arm v2"}
    assert answered["sticky"] <= {"v1 arm v1", "v2 arm v2"}
    assert "PASS" in done.stdout or "FAIL" in done.stdout
