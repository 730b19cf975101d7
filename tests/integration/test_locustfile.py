"""loadtests/locustfile.py runs headless against a real server: every model answers, none fails.

locust is a declared test dependency (the ``test`` extra), so a missing locust fails this test
rather than skipping it: CI must run it. About 8 s: locust's own start-up and a 4 s run with two
users.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"identity", "digits", "cnn", "add_sub", "breast_cancer", "digits_pipeline"}


@pytest.mark.slow
def test_locustfile_headless_run_has_no_failures(
    bundled_server, tmp_path: Path
) -> None:
    # Not imported here: importing locust monkey-patches the whole process with gevent, which
    # would wedge the test server's thread; locust runs in its own process below.
    assert importlib.util.find_spec("locust") is not None, (
        "locust is missing: it is part of the test extra (pip install -e '.[test]')"
    )
    prefix = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
            "--headless", "-u", "2", "-r", "2", "-t", "4s", "--only-summary",
            "--host", bundled_server.address, "--csv", str(prefix), "--sluice-timeout", "5",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    stats_file = prefix.with_name("run_stats.csv")
    assert stats_file.exists(), done.stderr[-3000:]
    with stats_file.open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows.pop("Aggregated")
    assert int(total["Failure Count"]) == 0, done.stderr[-3000:]
    assert int(total["Request Count"]) > 0
    assert set(rows) == MODELS
    assert all(int(row["Request Count"]) > 0 for row in rows.values())
    assert done.returncode == 0, done.stderr[-3000:]
