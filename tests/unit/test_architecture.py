"""House rules that CI enforces through the test command: import direction and lint."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The names the packages had before they moved under sluice (issue 12, item 8).
OLD_NAMES = ("server", "proto", "kernels", "clients")


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the project with its [test] extra")
    return found


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # sluice.* from root (through the link in .ci/pythonpath, see tests/support/checkout.py),
    # and loadtests/, which is not an installed package.
    pythonpath = os.pathsep.join([str(root / ".ci" / "pythonpath"), str(root)])
    env = {**os.environ, "PYTHONPATH": pythonpath}
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
     "The request path and the deployment machinery (and the monitors) know no transport"),
    ("server/monitoring/hub.py", "import numba",
     "The request path and the deployment machinery (and the monitors) know no transport"),
    ("server/monitoring/hub.py", "import sluice.server.rollout.router",
     "Server layers point one way"),
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
    (tmp_path / ".ci" / "pythonpath").mkdir(parents=True)
    (tmp_path / ".ci" / "pythonpath" / "sluice").symlink_to(Path("..", ".."))
    assert _lint_imports(tmp_path).returncode == 0  # the copy itself is clean
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # the rule this test breaks\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    summary = " ".join(out.stdout[out.stdout.index("Contracts"):].split())  # names wrap
    verdict = re.search(r" (KEPT|BROKEN)\b", summary[summary.index(contract):])
    assert verdict is not None and verdict.group(1) == "BROKEN", summary[-3000:]


def _sources(*suffixes: str) -> list[Path]:
    """Files of the checkout with these suffixes, outside hidden, build and result folders."""
    skip = {"build", "dist", "results", "__pycache__"}
    return sorted(
        path for path in ROOT.rglob("*")
        if path.suffix in suffixes and path.is_file()
        and not any(part.startswith(".") or part in skip or part.endswith(".egg-info")
                    for part in path.relative_to(ROOT).parts[:-1])
    )


_OLD = "|".join(OLD_NAMES)
_OLD_RUN = re.compile(rf"""-m(\s+|["']\s*,\s*["'])({_OLD})\b(?!-)""")
_OLD_IMPORT_LINE = re.compile(rf"^\s*(from\s+({_OLD})(\.\w+)*\s+import|import\s+({_OLD})\b)",
                              re.MULTILINE)


def test_nothing_uses_the_old_top_level_names():
    """server, proto, kernels and clients are sluice.server, sluice.proto, ... (proto alone is
    proto-plus's name). In a checkout the old names still import (the root is on the path), so
    an import or a ``python -m`` run of an old name that a merge brings back would pass every
    other test here and only break an installed Sluice."""
    found = []
    for path in _sources(".py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: import {name}" for name in names
                      if name.split(".")[0] in OLD_NAMES]
    for path in _sources(".py", ".md", ".toml", ".sh", ".gpu", ".ini"):
        text = path.read_text(encoding="utf-8")
        pattern_hits = [*_OLD_RUN.finditer(text)]
        if path.suffix == ".md":
            pattern_hits += [*_OLD_IMPORT_LINE.finditer(text)]
        found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, hit.start()) + 1}: "
                  f"{hit.group(0).strip()}" for hit in pattern_hits]
    assert not found, "\n".join(found)


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:]
