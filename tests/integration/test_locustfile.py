"""loadtests/locustfile.py runs headless against a real server: every model answers, none fails.

locust is a declared test dependency (the ``test`` extra), so a missing locust fails this test
rather than skipping it: CI must run it. The run ends after 120 requests from two users (a few
seconds after locust's own start-up), not after a fixed time that a slow start could use up.
"""

from __future__ import annotations

import importlib.util
import json
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
    stats_file = tmp_path / "stats.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
            # ends after 120 requests (each of the 6 models is picked at random: all are hit
            # but with probability ~2e-9); -t only caps a run that hangs. The final stats go to
            # a JSON file (the CSV is written on a 1 s timer, which a short run can beat).
            "--headless", "-u", "2", "-r", "2", "-t", "90s", "--only-summary",
            "--host", bundled_server.address, "--json-file", str(stats_file.with_suffix("")),
            "--sluice-timeout", "5", "--sluice-requests", "120",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(stats_file.read_text())}
    assert set(rows) == MODELS, done.stderr[-3000:]  # a failed metadata call adds a row
    assert sum(row["num_failures"] for row in rows.values()) == 0, done.stderr[-3000:]
    # the run ends at the 120th report (users may finish a few more before locust stops them)
    assert sum(row["num_requests"] for row in rows.values()) >= 120
    assert all(row["num_requests"] > 0 for row in rows.values())
