"""``pip install .`` (not ``-e``) gives a Sluice that serves, and that clashes with nothing.

The wheel is built from a copy of the checkout with this environment's setuptools (no build
isolation, nothing downloaded) and installed with ``--no-deps`` into a fresh virtual environment
(no system site-packages, no pip of its own). A ``.pth`` line in that environment puts this
environment's site-packages after its own, for the dependencies and for proto-plus (the test
extra), whose import name is ``proto``: so Sluice is installed beside proto-plus in seconds,
without downloading the dependencies again. Everything then runs from that environment, outside
the checkout and with no PYTHONPATH, so only the wheel can answer ``import sluice``.

Promises held here (issue 12, item 8):

* the wheel holds ``sluice/`` and its dist-info and nothing else at the top (no ``server``,
  ``proto``, ``kernels`` or ``clients``), and every file of those folders and of the bundled
  repository (digits_pipeline's empty version folder included);
* the top-level name ``proto`` is proto-plus's and ``sluice.proto`` is ours, side by side;
* the installed ``sluice serve`` serves the bundled repository from the wheel: every bundled
  model is READY, and digits answers through tritonclient what onnxruntime computes directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc

from sluice.server.app import BUNDLED_REPOSITORY
from tests.support.bundled_inputs import newest_onnx

ROOT = Path(__file__).resolve().parents[2]
#: Folder in the checkout -> where its files go in the wheel.
SHIPPED = {"server": "sluice/server", "proto": "sluice/proto", "kernels": "sluice/kernels",
           "clients": "sluice/clients", "model_repository": "sluice/model_repository"}
#: What a checkout has that a build does not read (and must not find: a stale build/ folder
#: would add its files to the wheel).
NOT_COPIED = shutil.ignore_patterns(".git", ".ci", ".venv", ".sluice-state", ".*_cache", ".whl",
                                    ".gl", "__pycache__", "build", "dist", "*.egg-info",
                                    "results", "tests")

# Asked of the installed environment; one JSON line back.
PROBE = """
import importlib, importlib.util, json, sluice.clients, sluice.kernels.cpu, sluice.server.app
from sluice.proto import grpc_service_pb2
proto = importlib.import_module("proto")  # proto-plus's top-level name, not ours
print(json.dumps({
    "proto": proto.__file__, "proto_plus": hasattr(proto, "Message"),
    "sluice_proto": grpc_service_pb2.__file__, "server": sluice.server.app.__file__,
    "bundled": str(sluice.server.app.BUNDLED_REPOSITORY),
    "old_names": [n for n in ("server", "kernels", "clients") if importlib.util.find_spec(n)],
}))
"""


def _run(args: list, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False,
                          **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _shipped_files() -> set[str]:
    """Every file of the shipped folders as the wheel must name it (caches and hidden folders
    such as a .sluice-state left by a local run excepted; hidden files, .keep, included)."""
    expected = set()
    for folder, target in SHIPPED.items():
        for path in (ROOT / folder).rglob("*"):
            parts = path.relative_to(ROOT / folder).parts
            if path.is_file() and not any(p == "__pycache__" or p.startswith(".")
                                          for p in parts[:-1]):
                expected.add("/".join((target, *parts)))
    return expected


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build the wheel, install it into a fresh environment; its paths and a clean env."""
    assert importlib.util.find_spec("proto") is not None, (
        "proto-plus is missing: it is part of the test extra (pip install -e '.[test]')"
    )
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED, symlinks=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp / "dist", source], timeout=300)
    (wheel,) = (tmp / "dist").glob("sluice-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        env=env, cwd=tmp).stdout.strip())
    # After the environment's own site-packages: the dependencies, and proto-plus.
    (purelib / "_this_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "-q", wheel], env=env, cwd=tmp, timeout=300)
    return {"wheel": wheel, "venv": venv, "python": python, "purelib": purelib, "env": env,
            "cwd": tmp}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_holds_sluice_and_nothing_else_at_the_top(installed: dict) -> None:
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = set(wheel.namelist())
    tops = {name.split("/")[0] for name in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"sluice"}, sorted(tops)
    assert not {"server", "proto", "kernels", "clients"} & tops
    missing = _shipped_files() - names
    assert not missing, f"not in the wheel (a package or a package-data pattern missing in " \
                        f"pyproject.toml?): {sorted(missing)}"
    assert "sluice/model_repository/digits_pipeline/1/.keep" in names


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sluice_imports_beside_proto_plus(installed: dict) -> None:
    out = _run([installed["python"], "-c", PROBE], env=installed["env"], cwd=installed["cwd"])
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    purelib = installed["purelib"]
    assert seen["proto_plus"], f"the top-level proto is not proto-plus: {seen['proto']}"
    assert not Path(seen["proto"]).is_relative_to(purelib), seen
    for key in ("sluice_proto", "server", "bundled"):
        assert Path(seen[key]).is_relative_to(purelib / "sluice"), (key, seen)
    assert seen["old_names"] == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_installed_sluice_serves_the_bundled_repository(installed: dict) -> None:
    proc = subprocess.Popen(
        [installed["venv"] / "bin" / "sluice", "serve", "--grpc-port", "0", "--metrics-port", "-1",
         "--log-level", "WARNING"],
        env=installed["env"], cwd=installed["cwd"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    try:
        address, lines = None, []
        deadline = time.monotonic() + 300  # cold Numba caches: every kernel compiles at load
        assert proc.stdout is not None
        while address is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            match = re.search(r"gRPC listening on (\S+)", line)
            if match:
                address = match.group(1)
            elif not line and proc.poll() is not None:
                break
        assert address is not None, "".join(lines)[-3000:]

        bundled = {p.name for p in BUNDLED_REPOSITORY.iterdir() if (p / "config.pbtxt").is_file()}
        rng = np.random.default_rng(8)
        pixels = rng.uniform(0, 16, (5, 64)).astype(np.float32)
        with tc.InferenceServerClient(address) as client:
            while not client.is_server_ready():  # it listens before its models load
                assert time.monotonic() < deadline and proc.poll() is None, "never ready"
                time.sleep(0.2)
            index = client.get_model_repository_index(as_json=True)["models"]
            ready = {m["name"] for m in index if m.get("state") == "READY"}
            assert ready == bundled, index
            tensor = tc.InferInput("input", list(pixels.shape), "FP32")
            tensor.set_data_from_numpy(pixels)
            result = client.infer("digits", [tensor], client_timeout=60)
        session = ort.InferenceSession(str(newest_onnx("digits")),  # the version that answers
                                       providers=["CPUExecutionProvider"])
        label, probabilities = session.run(["label", "probabilities"], {"input": pixels})
        np.testing.assert_array_equal(result.as_numpy("label").reshape(-1), label.reshape(-1))
        np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-6)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
