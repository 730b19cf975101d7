"""loadtests/auth_latency.py runs end to end on the two bare ceilings (plaintext and TLS): every
pair makes its calls, and each rise is its pair's figure minus its baseline's (a smoke test of
the harness; about 10 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_auth_latency_quick_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.auth_latency", "--rounds", "2", "--calls", "20",
         "--servers", "ceiling,ceiling_tls", "--clients", "bare,client_interceptor",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "auth_latency.json").read_text())
    pairs = payload["pairs"]
    assert sorted(pairs) == ["ceiling/bare", "ceiling/client_interceptor", "ceiling_tls/bare",
                             "ceiling_tls/client_interceptor"]
    for row in pairs.values():
        assert row["calls"] == 40
        assert 0 < row["best_client_cpu_us"] <= row["client_cpu_us"]
        assert 0 < row["best_server_cpu_us"] <= row["server_cpu_us"]
    for kind in ("bare", "client_interceptor"):
        rise = payload["rises"][f"ceiling_tls/{kind}"]
        assert rise["p50_us"] == pytest.approx(
            pairs[f"ceiling_tls/{kind}"]["p50_us"] - pairs[f"ceiling/{kind}"]["p50_us"])
