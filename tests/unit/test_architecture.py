"""House rules that CI enforces through the test command: import direction and lint."""

from __future__ import annotations

import os
import re
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


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # loadtests/ is not an installed package
    return subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=120, env=env)


def test_imports_point_one_way():
    """DESIGN.md: cli -> app -> protocol -> rollout -> serving -> backends -> config ->
    errors/types; serving and rollout know no grpc/proto/runtime; only app and protocol import
    rollout; clients, kernels and load tests never import the server."""
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


# (module that gets the import, the import, the contract that must break)
BROKEN_RULES = [
    ("server/serving/batcher.py", "import sluice.server.rollout.router",
     "Server layers point one way"),
    ("server/rollout/shadow.py", "import grpc",
     "The request path and the deployment machinery know no transport"),
    ("server/metrics.py", "import sluice.server.rollout.arm_stats",
     "Only the composition root and the transport import the deployment machinery"),
    ("server/config/model.py", "import sluice.server.serving.stats", "Server layers point one way"),
    ("clients/client.py", "import sluice.server.errors", "never import the server"),
]


@pytest.mark.parametrize(("module", "line", "contract"), BROKEN_RULES,
                         ids=[rule[0] for rule in BROKEN_RULES])
def test_a_broken_rule_fails_the_check(tmp_path: Path, module: str, line: str, contract: str):
    """The contracts are not vacuous: one forbidden import in a copy of the tree breaks them."""
    for name in ("server", "proto", "clients", "kernels", "loadtests"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path).returncode == 0  # the copy itself is clean
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # the rule this test breaks\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    summary = " ".join(out.stdout[out.stdout.index("Contracts"):].split())  # names wrap
    verdict = re.search(r" (KEPT|BROKEN)\b", summary[summary.index(contract):])
    assert verdict is not None and verdict.group(1) == "BROKEN", summary[-3000:]


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:]
