"""Put Triton's perf_analyzer (the C++ load generator users measure KServe v2 servers with) on
this Python environment's PATH.

    python -m loadtests.get_perf_analyzer

Current tritonclient wheels no longer carry the binary, and the standalone perf-analyzer
package is not on every index; the tritonclient 2.41.0 wheel still holds it. This downloads that
wheel (without installing it: the environment keeps its own tritonclient), writes the binary as
``<env>/bin/perf_analyzer.bin`` with a ``perf_analyzer`` wrapper beside it that sets the library
path, and installs the two libraries it links against: the CUDA runtime (a pip package; no GPU
needed) and libb64 (a Debian package, through apt-get when missing; needs root).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

WHEEL = "tritonclient[all]==2.41.0"
MEMBER = "tritonclient-2.41.0.data/data/bin/perf_analyzer"


def _has_libb64() -> bool:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    return "libb64.so.0d" in out


def main() -> int:
    scripts = Path(sysconfig.get_path("scripts"))
    site = Path(sysconfig.get_path("purelib"))
    if not _has_libb64():
        if shutil.which("apt-get") is None:
            print("perf_analyzer needs libb64 (Debian: libb64-0d); install it, then run this again",
                  file=sys.stderr)
            return 1
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "nvidia-cuda-runtime-cu12"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([*pip, "download", "-q", "--no-deps", "-d", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("tritonclient-2.41.0-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            binary = archive.read(MEMBER)
    target = scripts / "perf_analyzer.bin"
    target.write_bytes(binary)
    target.chmod(0o755)
    wrapper = scripts / "perf_analyzer"
    libs = site / "nvidia" / "cuda_runtime" / "lib"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'LD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "{target}" "$@"\n'
    )
    wrapper.chmod(0o755)
    check = subprocess.run([str(wrapper), "--help"], capture_output=True, text=True, check=False)
    if "perf_analyzer" not in check.stdout + check.stderr:
        print(f"perf_analyzer was written to {wrapper} but does not run: "
              f"{(check.stderr or check.stdout).strip()[:300]}", file=sys.stderr)
        return 1
    print(f"perf_analyzer: {wrapper}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
