"""Cost per prediction through a real server: each instance's CPU seconds, CPU seconds per row
and the price of 1,000 predictions on /metrics and in ``sluice stats``, process CPU and RSS.

The model computes on its instance thread only (one ORT thread), so what the server measures
for it can be held against the same model run here, on the test's thread, under the same
thread CPU clock: an independent measurement of the same work."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from sluice.server.cli import main as cli
from tests.support.metrics import labels, scrape
from tests.support.overload import WIDTH, slow_repo

PRICE = 0.072  # per core-hour
REQUESTS = 30
ROWS = 2


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def _reference_cpu_s(path: Path, x: np.ndarray, runs: int) -> float:
    """Thread CPU seconds of ``runs`` runs of the model on this thread."""
    session = _session(path)
    session.run(None, {"IN_x": x})  # warm, as the server's load does
    started = time.thread_time()
    for _ in range(runs):
        session.run(None, {"IN_x": x})
    return time.thread_time() - started


@pytest.fixture
def costed(make_server, tmp_path: Path):
    repo = slow_repo(tmp_path / "models", ms=4, max_batch=ROWS)
    running = make_server(repo, metrics_port=0, price_per_core_hour=PRICE)
    client = triton.InferenceServerClient(running.address)
    yield running, client, repo / "slow" / "1" / "model.onnx"
    client.close()


def _send(client, x: np.ndarray) -> None:
    tensor = triton.InferInput("IN_x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(REQUESTS):  # one at a time: every batch is one request of ROWS rows
        client.infer("slow", [tensor])


def test_instance_cpu_per_row_and_price_follow_the_work_done(costed):
    running, client, model_path = costed
    x = np.random.default_rng(3).random((ROWS, WIDTH), dtype=np.float32)
    before = scrape(running)
    _send(client, x)
    after = scrape(running)
    key = labels(model="slow", version="1")
    instance = after[("sluice_instance_cpu_seconds_total", labels(model="slow", version="1",
                                                                   instance="0"))]
    assert after[("sluice_inference_rows_total", key)] == REQUESTS * ROWS
    # Warm-up runs at load are not requests: before any request nothing was measured.
    assert before[("sluice_instance_cpu_seconds_total",
                   labels(model="slow", version="1", instance="0"))] == 0.0
    reference = _reference_cpu_s(model_path, x, REQUESTS)
    assert 0.6 * reference < instance < 1.6 * reference, (instance, reference)
    charged = after[("sluice_model_cpu_seconds_total", key)]
    # Charged: its own thread's CPU plus a share of the rest of the process (decoding, gRPC),
    # never more than the process used.
    assert instance <= charged <= after[("process_cpu_seconds_total", labels())]
    per_row = after[("sluice_cpu_seconds_per_row", key)]
    # One reading gives both: the gauge is the counter over the rows.
    assert per_row == pytest.approx(charged / (REQUESTS * ROWS), rel=1e-9)
    assert after[("sluice_cost_per_1k_predictions", key)] == pytest.approx(
        per_row * 1000 * PRICE / 3600, rel=1e-9)
    assert after[("sluice_price_per_core_hour", labels())] == PRICE


def test_process_rss_is_the_kernels_figure(costed):
    running, _, _ = costed
    rss = scrape(running)[("process_resident_memory_bytes", labels())]
    status = Path("/proc/self/status").read_text()  # the server runs in this process
    kib = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    assert rss == pytest.approx(kib * 1024, rel=0.1)


def test_sluice_stats_prints_cpu_per_row_and_the_price(costed, capsys):
    running, client, _ = costed
    x = np.ones((ROWS, WIDTH), np.float32)
    _send(client, x)
    assert cli(["stats", "slow", "--url", running.address, "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["slow"]["1"]["cost"]
    assert cost["rows"] == REQUESTS * ROWS
    assert cost["price_per_core_hour"] == PRICE
    assert cost["cpu_seconds_per_row"] == pytest.approx(cost["cpu_seconds"] / cost["rows"])
    assert cost["cost_per_1k_predictions"] == pytest.approx(
        cost["cpu_seconds_per_row"] * 1000 * PRICE / 3600)
    assert cost["own_cpu_seconds"] <= cost["cpu_seconds"]
    assert cli(["stats", "slow", "--url", running.address]) == 0
    out = capsys.readouterr().out
    assert "price per core-hour: 0.072" in out
    row = next(line.split() for line in out.splitlines()
               if line.startswith("slow") and "e2e" not in line and "queue" not in line
               and "compute" not in line)
    assert row[:3] == ["slow", "1", str(REQUESTS * ROWS)]
    # cpu ms/row and cost/1k as printed, from the CPU seconds printed (3 decimals)
    cpu_s, ms_per_row, per_1k = float(row[3]), float(row[4]), float(row[5])
    assert ms_per_row == pytest.approx(cpu_s * 1000 / (REQUESTS * ROWS), abs=0.01)
    assert per_1k == pytest.approx(ms_per_row / 1000 * 1000 * PRICE / 3600, rel=0.01)


@pytest.mark.parametrize("price", ["-1", "nan", "inf", "cheap"])
def test_a_price_that_is_no_price_is_refused_naming_the_flag(price, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["serve", "--price-per-core-hour", price])
    assert exit_.value.code == 2
    assert "--price-per-core-hour" in capsys.readouterr().err
