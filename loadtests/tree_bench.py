"""The tree-ensemble kernels against XGBoost's own predictor, and the GPU against the CPU.

    python -m loadtests.tree_bench [--gpu] [--quick] [--repeats R]

CPU (needs xgboost): an XGBoost binary:logistic model, 200 trees of depth 6, trained here on
synthetic data with 50 features (5% NaN), run by :func:`sluice.kernels.cpu.forest_predict` and by
``Booster.inplace_predict`` on the same float32 rows, both on 2 threads (Numba threads 2,
xgboost nthread 2), at batch 1, 64, 1024 and 16384, on rows without NaN and with 5% NaN
(XGBoost's predictor slows down on missing values; ours does not). Both are OpenMP programs
with their own thread pools whose idle threads spin, so the two sides are timed in separate
phases a short sleep apart, alternating, ``--repeats`` times; a figure is the median over
repeats and the ratio is the median of the per-repeat ratios.

GPU (``--gpu``; needs only numba and numpy): a synthetic forest (500 trees, depth 8, 100
features) at batch 65536: :class:`sluice.kernels.cuda.ForestGPU` end to end (copies included) and
its kernel alone (CUDA events), against the CPU kernel on every core. The bandwidth is an
estimate: per row, 12 bytes of node data per step plus the leaf value for every tree, plus the
row's input and output bytes, over the kernel time; as a fraction of the card's peak when Numba
reports its memory clock and bus width.

The model file is read by :mod:`sluice.kernels.formats`, the loader the server itself uses.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sluice.kernels import cpu
from sluice.kernels.forest import Forest, synthetic_forest
from sluice.kernels.formats import load_xgboost_json

CPU_BATCHES = (1, 64, 1024, 16384)
GPU_BATCH = 65536
THREADS = 2


def _rate(fn: Callable[[], object], rows: int, budget_s: float) -> float:
    """Rows/s of ``fn`` over about ``budget_s`` (at least 3 calls), after one warm-up call."""
    fn()
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 3 and elapsed >= budget_s:
            return rows * calls / elapsed


def _load_forest(path: Path) -> Forest:
    forest = load_xgboost_json(path)
    forest.validate()
    return forest


def _rows(n: int, n_features: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def cpu_vs_xgboost(repeats: int, budget_s: float) -> None:
    try:
        import xgboost as xgb
    except ImportError:
        print("xgboost is not installed: CPU comparison skipped")
        return
    import numba

    numba.set_num_threads(THREADS)
    x = _rows(20000, 50, seed=0)
    y = (np.nan_to_num(x[:, :5]).sum(axis=1) + np.nan_to_num(x[:, 5] * x[:, 6]) > 0)
    params = {"objective": "binary:logistic", "max_depth": 6, "nthread": THREADS, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(x, label=y.astype(np.float32)), 200)
    with tempfile.TemporaryDirectory() as tmp:
        booster.save_model(Path(tmp) / "model.json")
        forest = _load_forest(Path(tmp) / "model.json")
    cpu.warmup()
    with_nan = _rows(max(CPU_BATCHES), 50, seed=1)
    inputs = {"no NaN": np.nan_to_num(with_nan), "5% NaN": with_nan}
    diff = max(np.abs(cpu.forest_predict(forest, x)[:, 0] - booster.inplace_predict(x)).max()
               for x in inputs.values())
    print(f"model: {forest.n_trees} trees, depth {forest.max_depth()}, {forest.n_nodes} nodes, "
          f"50 features; {THREADS} threads each; max |ours - xgboost| = {diff:.2e}")
    results: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(repeats):
        for side in ("sluice", "xgboost"):
            time.sleep(0.2)  # let the other side's OpenMP threads stop spinning
            for label, x in inputs.items():
                for batch in CPU_BATCHES:
                    rows = x[:batch]
                    if side == "sluice":
                        rate = _rate(lambda rows=rows: cpu.forest_predict(forest, rows), batch,
                                     budget_s)
                    else:
                        rate = _rate(lambda rows=rows: booster.inplace_predict(rows), batch,
                                     budget_s)
                    results.setdefault((side, label, batch), []).append(rate)
    print(f"\n{'input':<7} {'batch':>6} {'sluice rows/s':>14} {'xgboost rows/s':>15} "
          f"{'ratio':>7}")
    for label in inputs:
        for batch in CPU_BATCHES:
            ours = results[("sluice", label, batch)]
            theirs = results[("xgboost", label, batch)]
            ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            print(f"{label:<7} {batch:>6} {statistics.median(ours):>14,.0f} "
                  f"{statistics.median(theirs):>15,.0f} {ratio:>6.2f}x")


def _peak_bandwidth(device) -> float | None:
    """Bytes/s from the memory clock (kHz, double data rate) and bus width (bits)."""
    try:
        clock_khz = device.MEMORY_CLOCK_RATE
        bus_bits = device.GLOBAL_MEMORY_BUS_WIDTH
    except Exception:  # attribute missing in this driver / numba version
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def gpu_vs_cpu(repeats: int, budget_s: float) -> None:
    import numba
    from numba import cuda

    from sluice.kernels.cuda import ForestGPU, gpu_available, simulator_enabled

    if not gpu_available() or simulator_enabled():
        print("no CUDA GPU: GPU comparison skipped")
        return
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # every core for the CPU side
    forest = synthetic_forest(500, 8, 100, seed=0)
    compact = forest.compact
    x = _rows(GPU_BATCH, forest.n_features, seed=2)
    model = ForestGPU(forest)
    model.warmup()
    cpu.warmup()
    diff = np.abs(model.predict(x) - cpu.forest_predict(forest, x)).max()
    d_cols = cuda.to_device(np.asfortranarray(x))
    d_out = cuda.device_array((GPU_BATCH, forest.n_groups), dtype=np.float64)
    start, stop = cuda.event(), cuda.event()

    def kernel_seconds() -> float:
        start.record(model.stream)
        model.predict_device(d_cols, d_out)
        stop.record(model.stream)
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3  # ms

    kernel_seconds()
    end_to_end, cpu_rates, kernel_s = [], [], []
    for _ in range(repeats):
        end_to_end.append(_rate(lambda: model.predict(x), GPU_BATCH, budget_s))
        cpu_rates.append(_rate(lambda: cpu.forest_predict(forest, x), GPU_BATCH, budget_s))
        kernel_s.append(min(kernel_seconds() for _ in range(5)))
    seconds = max(statistics.median(kernel_s), 1e-9)
    steps = int(compact.depth.sum())
    row_bytes = steps * 12 + forest.n_trees * 8 + forest.n_features * 4 + forest.n_groups * 8
    bandwidth = GPU_BATCH * row_bytes / seconds
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    print(f"\nGPU: {name}; forest: {forest.n_trees} trees, depth {forest.max_depth()}, "
          f"{forest.n_nodes} nodes, {forest.n_features} features; batch {GPU_BATCH}; "
          f"max |gpu - cpu| = {diff:.2e}")
    print(f"{'what':<34} {'rows/s':>14}")
    print(f"{'CPU kernel, ' + str(numba.get_num_threads()) + ' threads':<34} "
          f"{statistics.median(cpu_rates):>14,.0f}")
    print(f"{'GPU end to end (copies included)':<34} {statistics.median(end_to_end):>14,.0f}")
    print(f"{'GPU kernel only':<34} {GPU_BATCH / seconds:>14,.0f}")
    peak = _peak_bandwidth(device)
    line = f"kernel bandwidth estimate: {bandwidth / 1e9:,.1f} GB/s"
    if peak:
        line += f" = {bandwidth / peak:.1%} of the {peak / 1e9:,.0f} GB/s peak"
    print(line + f" ({row_bytes} bytes per row, {seconds * 1e3:.2f} ms per batch)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="also compare the GPU with the CPU")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    budget_s = 0.2 if args.quick else 0.5
    cpu_vs_xgboost(repeats, budget_s)
    if args.gpu:
        gpu_vs_cpu(repeats, budget_s)


if __name__ == "__main__":
    main()
