"""The served path on a real GPU: a Sluice server, clients.Client, real gRPC, KIND_GPU trees.

One server (in this process, on its own event loop thread, port 0) serves two copies of the
bundled ``breast_cancer`` (XGBoost, Triton FIL layout): ``breast_cancer_gpu`` with
``instance_group [{ kind: KIND_GPU }]`` and ``breast_cancer_cpu`` with ``KIND_CPU``,
``max_batch_size`` raised to 32768. Answers over gRPC, at batch sizes from 1 to 32768 and from
concurrent clients (so the dynamic batcher merges and splits requests on the GPU path), are
checked against :func:`sluice.kernels.cpu.forest_predict` on the same forest (read by
:mod:`sluice.kernels.formats`) and against the CPU-served copy; ModelConfig must report the GPU.

Skipped unless Numba sees a CUDA device and the simulator is off; without pytest this file runs
itself (``tests/gpu/run.sh``). To test the harness without a GPU: ``SLUICE_GPU_SERVING=cpu``
serves both copies on KIND_CPU (the GPU-specific checks then expect no GPU note), and
``SLUICE_GPU_SERVING=sim`` with ``NUMBA_ENABLE_CUDASIM=1`` serves the GPU copy on KIND_GPU
through Numba's CUDA simulator, with batches of at most 16 rows (it is slow).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from loadtests.gpu_serving_bench import write_repository
from loadtests.models import MODEL_REPOSITORY
from sluice.clients import Client
from sluice.kernels import cpu
from sluice.kernels import cuda as gpu
from sluice.kernels.formats import load_tree_model
from sluice.proto import model_config_pb2

try:
    import pytest
except ImportError:  # the GPU machine may lack pytest: run.sh then runs this file directly
    pytest = None

_MODE = os.environ.get("SLUICE_GPU_SERVING", "")
#: ``cpu``: serve the "GPU" copy on KIND_CPU too, to run the harness without a GPU.
CPU_HARNESS = _MODE == "cpu"
#: ``sim`` (with NUMBA_ENABLE_CUDASIM=1): KIND_GPU through the simulator, small batches only.
SIM_HARNESS = _MODE == "sim" and gpu.simulator_enabled()
GPU_MODEL, CPU_MODEL = "breast_cancer_gpu", "breast_cancer_cpu"
MAX_BATCH = 16 if SIM_HARNESS else 32768
#: Out of order on purpose: the GPU's device buffers grow to the largest batch and are reused.
BATCHES = (1, 16, 3, 9) if SIM_HARNESS else (1, 4096, 3, 32768, 143, 1000, 2, 20000, 257)
CONCURRENT_SIZES = [1, 7, 3, 16] * 2 if SIM_HARNESS else [1, 7, 64, 300, 1024, 5, 2048, 33] * 6
ATOL = RTOL = 1e-6


def _real_gpu() -> bool:
    return gpu.gpu_available() and not gpu.simulator_enabled()


def _enabled() -> bool:
    return CPU_HARNESS or SIM_HARNESS or _real_gpu()


if pytest is not None:
    pytestmark = [
        pytest.mark.gpu,
        pytest.mark.skipif(not _enabled(), reason="needs an NVIDIA GPU visible to numba.cuda "
                           "(SLUICE_GPU_SERVING=cpu runs the harness on the CPU)"),
        # the server's warm-up and small batches make small launches; not what is tested here
        pytest.mark.filterwarnings("ignore:.*Grid size"),
        pytest.mark.filterwarnings("ignore:.*Host array used in CUDA kernel"),
    ]


class _Served:
    """A server over a temporary repository, run on a fresh event loop in a daemon thread."""

    def __init__(self) -> None:
        from sluice.server.config.settings import ServerConfig  # the server only where a test runs
        from tests.support.running import start_server

        self._tmp = tempfile.mkdtemp(prefix="sluice-gpu-serving-")
        gpu_kind = "KIND_CPU" if CPU_HARNESS else "KIND_GPU"
        repository = write_repository(Path(self._tmp) / "models",
                                      {GPU_MODEL: gpu_kind, CPU_MODEL: "KIND_CPU"}, MAX_BATCH)
        config = ServerConfig(model_repository=repository, grpc_port=0, metrics_port=None)
        try:
            # loading compiles the CUDA kernels
            self.running = start_server(config, start_timeout_s=300)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.server = self.running.server
        self.client = Client(f"127.0.0.1:{self.server.port}", timeout=120)
        self.forest = load_tree_model(MODEL_REPOSITORY / "breast_cancer" / "1", "xgboost_json")

    def stop(self) -> None:
        self.client.close()
        self.running.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def expected(self, x: np.ndarray) -> np.ndarray:
        """What the served model answers (output_class + predict_proba: [1 - p, p])."""
        p = cpu.forest_predict(self.forest, x)[:, 0]
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)

    def infer(self, model: str, x: np.ndarray) -> np.ndarray:
        out = self.client.infer(model, {"input__0": x})["output__0"]
        assert out.dtype == np.float32 and out.shape == (x.shape[0], 2), (out.dtype, out.shape)
        return out


_served: _Served | None = None
_failed: BaseException | None = None  # a server that failed to start is not tried again


def _server() -> _Served:
    global _served, _failed
    if _failed is not None:
        raise RuntimeError(f"the server did not start: {_failed!r}") from _failed
    if _served is None:
        try:
            _served = _Served()
        except BaseException as exc:
            _failed = exc
            raise
    return _served


def teardown_module() -> None:
    global _served
    if _served is not None:
        _served.stop()
        _served = None


def _rows(n: int, seed: int) -> np.ndarray:
    """``n`` plausible rows: the bundled test split tiled and scaled, with NaNs and zeros."""
    rng = np.random.default_rng(seed)
    with np.load(MODEL_REPOSITORY / "breast_cancer" / "test_split.npz") as data:
        base = data["X"].astype(np.float32)
    x = base[rng.integers(0, len(base), size=n)] * rng.uniform(0.7, 1.3, size=(n, 1)).astype(
        np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.02] = 0.0
    return np.ascontiguousarray(x, dtype=np.float32)


def _check(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def test_model_config_reports_the_gpu():
    served = _server()
    kinds = model_config_pb2.ModelInstanceGroup.Kind
    gpu_config = served.client.model_config(GPU_MODEL)
    cpu_config = served.client.model_config(CPU_MODEL)
    gpu_notes = gpu_config.parameters["sluice.notes"].string_value
    cpu_notes = cpu_config.parameters["sluice.notes"].string_value
    print(f"{GPU_MODEL}: kind {kinds.Name(gpu_config.instance_group[0].kind)}, notes "
          f"{gpu_notes!r}; {CPU_MODEL}: notes {cpu_notes!r}")
    assert [kinds.Name(g.kind) for g in cpu_config.instance_group] == ["KIND_CPU"]
    assert "GPU" not in cpu_notes
    assert gpu_config.max_batch_size == MAX_BATCH
    if CPU_HARNESS:
        assert "GPU" not in gpu_notes
        return
    assert [kinds.Name(g.kind) for g in gpu_config.instance_group] == ["KIND_GPU"]
    assert "GPU" in gpu_notes, f"no GPU note in ModelConfig parameters: {gpu_notes!r}"


def test_served_gpu_matches_cpu_reference_and_cpu_served_copy():
    served = _server()
    for i, n in enumerate(BATCHES):
        x = _rows(n, seed=i)
        expected = served.expected(x)
        on_gpu = served.infer(GPU_MODEL, x)
        on_cpu = served.infer(CPU_MODEL, x)
        _check(on_cpu, expected, f"CPU-served vs sluice.kernels.cpu, batch {n}")
        _check(on_gpu, expected, f"GPU-served vs sluice.kernels.cpu, batch {n}")
        _check(on_gpu, on_cpu, f"GPU-served vs CPU-served, batch {n}")
        assert np.isfinite(on_gpu).all()


def test_served_gpu_all_nan_and_extreme_rows():
    served = _server()
    x = np.full((16, served.forest.n_features), np.nan, dtype=np.float32)
    x[4:8] = 0.0
    x[8:12] = np.finfo(np.float32).max
    x[12:] = -np.finfo(np.float32).max
    _check(served.infer(GPU_MODEL, x), served.expected(x), "NaN/zero/extreme rows")


def test_concurrent_requests_are_batched_and_split_correctly():
    served = _server()
    sizes = CONCURRENT_SIZES
    inputs = [_rows(n, seed=100 + i) for i, n in enumerate(sizes)]

    def one(x: np.ndarray) -> np.ndarray:
        return served.infer(GPU_MODEL, x)

    before = served.client.statistics(GPU_MODEL).model_stats[0]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, inputs))
    for n, x, got in zip(sizes, inputs, answers, strict=True):
        _check(got, served.expected(x), f"concurrent request of {n} rows")
    after = served.client.statistics(GPU_MODEL).model_stats[0]
    executions = after.execution_count - before.execution_count
    rows = after.inference_count - before.inference_count
    print(f"{GPU_MODEL}: {len(sizes)} requests, {rows} rows in {executions} executions")
    assert rows == sum(sizes)
    # 8 callers keep requests queued while a batch computes, so some batches merge requests.
    assert 0 < executions < len(sizes)


if __name__ == "__main__":
    from tests.gpu.runner import run_tests

    run_tests(globals(), _enabled(), teardown_module)
