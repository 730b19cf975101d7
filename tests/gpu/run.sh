#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU and no network:
#     bash tests/gpu/run.sh
# Needs python3 with numba (+ numba-cuda) and numpy. When a .whl folder is at the repository
# root (wheels for what that machine lacks: grpcio, grpcio-health-checking, grpcio-reflection,
# protobuf), they are installed into /tmp/site first; nothing else is
# installed. Steps, each run even when an earlier one failed, with a summary at the end:
#   1. tests/gpu with pytest when pytest is there (else each test file runs itself): the CUDA
#      kernels against the CPU kernels, and a real server serving breast_cancer on KIND_GPU and
#      KIND_CPU over gRPC (tests/gpu/test_gpu_serving.py);
#   2. the kernel benchmark (python3 -m loadtests.tree_bench --gpu --quick);
#   3. the served benchmark, GPU against CPU rows/s (python3 -m loadtests.gpu_serving_bench).
# With OUT set, the whole log goes to $OUT/gpu-run.log and the served benchmark's results to
# $OUT/gpu_serving_bench.json as well. SLUICE_GPU_BENCH_ARGS adds flags to the served benchmark
# (e.g. "--rounds 1 --duration 1"); SLUICE_GPU_SERVING=cpu runs the serving tests without a GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."

main() {
    export PYTHONUNBUFFERED=1
    echo "== GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        || echo "nvidia-smi failed or is missing"
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "== installing $(ls .whl/*.whl | wc -l) wheels from .whl into /tmp/site"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || return 1
        export PYTHONPATH="/tmp/site:$PWD"
    else
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
    python3 - <<'EOF' || return 1
import importlib, sys
print("== python", sys.version.split()[0], sys.executable)
for name in ("numpy", "numba", "numba_cuda", "grpc", "google.protobuf", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"   {name} {getattr(module, '__version__', '?')}  {getattr(module, '__file__', '')}")
    except Exception as exc:
        print(f"   {name}: {type(exc).__name__}: {exc}")
EOF
    local results=() status=0
    step() {  # step NAME SECONDS COMMAND...: run with a time limit, record rc and time
        local name=$1 limit=$2 start=$SECONDS rc
        shift 2
        echo "== $name (limit ${limit}s)"
        timeout --kill-after=10 "$limit" "$@"
        rc=$?
        results+=("$(printf '%-26s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - start))")")
        [[ $rc == 0 ]] || status=1
    }
    if python3 -c "import pytest" 2>/dev/null; then
        # no third-party plugins: whatever this machine has installed, only the ini applies
        PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 step "gpu tests (pytest)" 210 python3 -m pytest \
            -c tests/gpu/gpu-pytest.ini --rootdir . --noconftest -q -rA tests/gpu
    else
        step "gpu kernel tests" 140 python3 tests/gpu/test_gpu_kernels.py
        step "gpu serving tests" 70 python3 tests/gpu/test_gpu_serving.py
    fi
    step "tree_bench --gpu --quick" 90 python3 -m loadtests.tree_bench --gpu --quick
    # shellcheck disable=SC2086  # SLUICE_GPU_BENCH_ARGS: extra flags, word-split on purpose
    step "gpu_serving_bench" 160 python3 -m loadtests.gpu_serving_bench \
        ${OUT:+--json "$OUT/gpu_serving_bench.json"} ${SLUICE_GPU_BENCH_ARGS:-}
    echo "== summary (total ${SECONDS}s)"
    printf '   %s\n' "${results[@]}"
    return $status
}

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/gpu-run.log"
    exit "${PIPESTATUS[0]}"
fi
main
