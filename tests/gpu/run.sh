#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU and no network:
#     bash tests/gpu/run.sh
# Needs python3 with numba (+ numba-cuda) and numpy; nothing is installed. Runs tests/gpu with
# pytest when pytest is there (else the test file runs itself), then the kernel benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if python3 -c "import pytest" 2>/dev/null; then
    # no third-party plugins: whatever this machine has installed, only the ini applies
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -c tests/gpu/gpu-pytest.ini --rootdir . \
        --noconftest -q tests/gpu
else
    python3 tests/gpu/test_gpu_kernels.py
fi
python3 -m loadtests.tree_bench --gpu --quick
