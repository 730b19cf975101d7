"""The images (Dockerfile, Dockerfile.gpu), checked without docker: hadolint passes on both, the
README's build and run commands are the ones the Dockerfiles' headers state, the entry point's
flags are ones `sluice serve` accepts, the ports are its defaults, the user is not root, and the
GPU image installs onnxruntime-gpu in place of onnxruntime, never beside it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.k8s import tool
from tests.support.readme import readme_blocks

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"cpu": ROOT / "Dockerfile", "gpu": ROOT / "Dockerfile.gpu"}


def header_commands(dockerfile: Path) -> list[str]:
    """The commands a Dockerfile's header comment states after '# Build:' and '# Run:' (a
    command continues on the next comment line when it ends with a backslash)."""
    commands: list[str] = []
    continued = False
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        label = re.match(r"(Build|Run):\s+(.*)", text)
        if continued:
            commands[-1] += "\n" + text
        elif label or (commands and text.startswith("docker ") and line.startswith("#   ")):
            commands.append(label.group(2) if label else text)
        continued = bool(commands) and commands[-1].endswith("\\")
    return commands


def readme_image_commands() -> list[str]:
    [block] = [b for b in readme_blocks() if b.section == "Images" and b.language == "bash"]
    assert block.skip is not None and "docker" in block.skip, "docker cannot run in the tests"
    commands: list[str] = []
    for line in block.text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if commands and commands[-1].endswith("\\"):
            commands[-1] += "\n" + line.strip()
        else:
            commands.append(line.strip())
    return commands


def instruction(dockerfile: Path, name: str) -> str:
    """The (last) instruction ``name`` of the Dockerfile, its continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    found = [line[len(name) + 1:].strip() for line in text.splitlines()
             if line.startswith(name + " ")]
    assert found, f"{dockerfile.name} has no {name}"
    return found[-1]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint_passes(image: str) -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(IMAGES[image])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_would_catch_a_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(IMAGES["cpu"].read_text().replace("USER 10001", "USER root"))
    result = subprocess.run([tool("hadolint"), "--no-color", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3002" in result.stdout  # last USER should not be root


def test_the_readme_builds_and_runs_the_images_as_their_headers_say() -> None:
    stated = [c for image in ("cpu", "gpu") for c in header_commands(IMAGES[image])]
    assert len(stated) == 6, stated  # per image: one build, two runs
    assert stated[0] == "docker build -t sluice:cpu ."
    assert stated[3] == "docker build -f Dockerfile.gpu -t sluice:gpu ."
    assert readme_image_commands() == stated


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_the_entrypoint_ports_user_and_health_check_are_the_servers_own(image: str) -> None:
    from sluice.server.cli import _parser

    dockerfile = IMAGES[image]
    entrypoint = json.loads(instruction(dockerfile, "ENTRYPOINT"))
    assert entrypoint[:2] == ["sluice", "serve"]
    # What `docker run IMAGE --insecure` runs, parsed by the real command line.
    args = _parser().parse_args([*entrypoint[1:], "--insecure"])
    assert (args.host, str(args.state_dir)) == ("0.0.0.0", "/var/lib/sluice")
    assert sorted(int(p) for p in instruction(dockerfile, "EXPOSE").split()) == sorted(
        [args.grpc_port, args.metrics_port]) == [8001, 8002]
    user = instruction(dockerfile, "USER")
    assert user.isdigit() and int(user) != 0
    assert f"--uid {user}" in dockerfile.read_text()
    health = instruction(dockerfile, "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3:])
    assert command[:2] == ["sluice", "health"]
    _parser().parse_args(command[1:])  # a verb and flags the CLI knows


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_the_gpu_image_installs_onnxruntime_gpu_in_place_of_onnxruntime() -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "images"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    assert "onnxruntime" in runtime
    cpu = requirements(ROOT / "pyproject.toml", [], [])
    assert _names(cpu) == runtime
    gpu = requirements(ROOT / "pyproject.toml", ["gpu"], ["onnxruntime"])
    assert _names(gpu) == (runtime - {"onnxruntime"}) | {"onnxruntime-gpu", "numba-cuda",
                                                         "nvidia-ml-py"}
    text = IMAGES["gpu"].read_text()
    assert "requirements.py --extra gpu --without onnxruntime" in text
    assert "pip install --no-deps ." in text  # Sluice's own metadata would pull onnxruntime
    assert re.search(r"^FROM nvidia/cuda:12[.\d]*-cudnn-runtime-", text, re.M)
