"""The README as a newcomer follows it after the quick start: every shell, console and Python
example runs as written, in README order, in one terminal session (tests/support/readme.py)
against a live ``sluice serve`` over the bundled repository. A block passes with exit status 0,
no traceback in its output and, where the README states output, that output. Blocks marked
``<!-- readme-test: skip (why) -->`` are listed as skipped tests with their reason.

The session starts as a new terminal at the repository root after the quick start: a working
directory linking to this checkout's top level and to the venv running these tests as
``.venv``, without that venv on PATH, so ``sluice`` and ``python`` are the venv's only once the
README has activated it. The one rewrite: the README's server is the quick start's, on
127.0.0.1:8001 (gRPC), 127.0.0.1:8002 (metrics) and 127.0.0.1:8000 (REST), while this test's
listens on free ports; those addresses (also as ``localhost:``) become the live ones wherever a
block writes them, and the session has ``SLUICE_URL`` set to the gRPC address, which
``sluice`` commands naming no server call. Nothing else in a block changes.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import pytest

from tests.support.cli_server import start_cli_server
from tests.support.readme import (
    TRACEBACK,
    fresh_terminal,
    problems,
    reader_checkout,
    readme_blocks,
    run_session,
    venv_root,
)

README_GRPC, README_METRICS, README_HTTP = "8001", "8002", "8000"


def _skipped() -> list[object]:
    return [pytest.param(b, id=f"README.md:{b.line}") for b in readme_blocks() if b.skip]


@pytest.mark.parametrize("block", _skipped())
def test_readme_block_marked_skip(block) -> None:
    pytest.skip(f"{block.where} not run: {block.skip}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_every_readme_example_runs_as_written_after_the_quick_start(tmp_path: Path) -> None:
    blocks = readme_blocks()
    assert {"bash", "python"} <= {b.language for b in blocks if b.runs}
    venv = venv_root()
    assert venv is not None, "run the tests from the quick start's .venv (.venv/bin/pytest)"
    workdir = reader_checkout(tmp_path / "clone", venv)

    proc, grpc_address = start_cli_server("--metrics-port", "0", "--http-port", "0",
                                          "--state-dir", str(tmp_path / "state"))
    assert proc.stdout is not None
    metrics = re.search(r"metrics on http://(\S+)/metrics", proc.stdout.readline())
    assert metrics, "the server printed no metrics address"
    rest = re.search(r"HTTP listening on http://(\S+)", proc.stdout.readline())  # REST
    assert rest, "the server printed no HTTP address"
    server_output: list[str] = []
    drain = threading.Thread(target=lambda: server_output.extend(proc.stdout), daemon=True)
    drain.start()
    replace = {}
    for host in ("127.0.0.1", "localhost"):
        replace[f"{host}:{README_GRPC}"] = grpc_address
        replace[f"{host}:{README_METRICS}"] = metrics.group(1)
        replace[f"{host}:{README_HTTP}"] = rest.group(1)
    try:
        session = run_session(blocks, workdir,
                              {**fresh_terminal(os.environ, venv), "SLUICE_URL": grpc_address},
                              replace=replace)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        drain.join(10)
        proc.stdout.close()
    found = problems(blocks, session)
    assert not found, "\n\n".join(found)
    assert code == 0 and not any(TRACEBACK in line for line in server_output), "".join(
        server_output[-200:])
