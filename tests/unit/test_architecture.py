"""House rules that CI enforces through the test command: import direction and lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the project with its [test] extra")
    return found


def test_imports_point_one_way():
    """DESIGN.md: cli -> app -> protocol -> core -> backends; core knows no grpc/proto/runtime;
    clients, kernels and load tests never import the server."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # loadtests/ is not an installed package
    out = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:]
