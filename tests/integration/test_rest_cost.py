"""loadtests/rest_cost.py runs end to end: a real server's REST door and the constant aiohttp
servicer each answer a client process, and the table gives each one's CPU per request (a smoke
test of the harness; about 15 s)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rest_cost_quick_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.rest_cost", "--concurrency", "2", "--rounds", "1",
         "--count", "300", "--reps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        found = re.match(r"\s*2 (\w+)\s+([\d.]+)\s+([\d.]+)$", line)
        if found:
            rows[found.group(1)] = float(found.group(2)), float(found.group(3))
    assert set(rows) == {"sluice", "constant"}, done.stdout
    for process_us, loop_us in rows.values():
        # Every thread's CPU includes the loop thread's; a request costs something, not seconds.
        assert 0 < loop_us <= process_us * 1.02 < 100_000
