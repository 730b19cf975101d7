"""The prediction log through a real server over a copy of the bundled repository (digits ships
with logging on, inputs kept): request ids on unary and streamed responses, every logged record
equal to what the client received, the sample rate honoured within a binomial bound, settings
changed from the command line, a broken log directory that never fails inference, and bad
settings refused naming what is wrong."""

from __future__ import annotations

import asyncio
import queue

import numpy as np
import pyarrow.dataset as ds
import pytest
import tritonclient.grpc as tc

from sluice.clients import AdminClient, InvalidInput, ModelNotFound
from sluice.server.cli import main as cli
from tests.support.metrics import labels, scrape

ROWS = 3


@pytest.fixture
def digits(make_server, repo_copy):
    return make_server(repo_copy, model_control="explicit", startup_models=("digits",),
                       metrics_port=0)


def flush(running) -> None:
    assert running.call(asyncio.to_thread(running.server.monitors.prediction_log.flush))


def logged(running) -> dict[str, list[dict]]:
    """Request id -> its rows in the log, read back as pandas / DuckDB would (Hive partitions)."""
    flush(running)
    root = running.server.config.predictions_dir
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    rows: dict[str, list[dict]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["row"]):
        rows.setdefault(row["id"], []).append(row)
    return rows


def digits_input(seed: int, rows: int = ROWS) -> tuple[np.ndarray, tc.InferInput]:
    x = np.random.default_rng(seed).random((rows, 64), dtype=np.float32) * 16
    given = tc.InferInput("input", list(x.shape), "FP32")
    given.set_data_from_numpy(x)
    return x, given


def check_record(rows: list[dict], x: np.ndarray, result: tc.InferResult) -> None:
    """The logged rows of one request hold exactly its inputs and the outputs received."""
    label, probabilities = result.as_numpy("label"), result.as_numpy("probabilities")
    assert [r["row"] for r in rows] == list(range(len(x)))
    for n, row in enumerate(rows):
        assert row["status"] == "OK" and row["model"] == "digits" and row["version"] == 2
        assert row["arm"] == "" and row["latency_s"] > 0
        assert row["output_label"] == label[n, 0]
        np.testing.assert_array_equal(np.float32(row["output_probabilities"]), probabilities[n])
        np.testing.assert_array_equal(np.float32(row["input_input"]), x[n])


def test_every_request_is_logged_with_what_its_client_received(digits):
    client = tc.InferenceServerClient(digits.address)
    sent: dict[str, tuple[np.ndarray, tc.InferResult]] = {}
    for i in range(6):  # unary, with and without an id of their own
        x, given = digits_input(i)
        result = client.infer("digits", [given], request_id=f"mine-{i}" if i % 2 else "")
        answered_id = result.get_response().id
        assert answered_id == f"mine-{i}" if i % 2 else answered_id
        sent[answered_id] = (x, result)
    answers: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    inputs = {}
    for i in range(1, 7):  # streamed, likewise; request i has i rows, which names its answer
        inputs[i], given = digits_input(10 + i, rows=i)
        client.async_stream_infer("digits", [given], request_id=f"streamed-{i}" if i % 2 else "")
    streamed = [answers.get(timeout=30) for _ in range(6)]
    client.stop_stream()
    for result, error in streamed:
        assert error is None
        i = len(result.as_numpy("label"))
        answered_id = result.get_response().id
        assert answered_id == f"streamed-{i}" if i % 2 else answered_id
        sent[answered_id] = (inputs[i], result)
    assert len(sent) == 12  # every id its own: 3 + 3 given, 3 + 3 made by the server
    log = logged(digits)
    assert sorted(log) == sorted(sent)
    for answered_id, (x, result) in sent.items():
        check_record(log[answered_id], x, result)


def test_the_sample_rate_set_from_the_command_line_is_honoured(digits, capsys):
    assert cli(["logging", "digits", "--sample", "0.25", "--no-inputs", "--url",
                digits.address]) == 0
    assert capsys.readouterr().out.startswith(
        "model digits: logging 0.25 of requests, outputs only (admin)")
    client = tc.InferenceServerClient(digits.address)
    n, p = 1200, 0.25
    _, given = digits_input(0, rows=1)
    for _ in range(n):
        client.infer("digits", [given])
    log = logged(digits)
    # |kept - n p| <= 5 sd fails with probability below 6e-7 for a fair sampler
    assert abs(len(log) - n * p) <= 5 * (n * p * (1 - p)) ** 0.5, len(log)
    assert all("input_input" not in rows[0] for rows in log.values())
    metrics = scrape(digits)
    assert metrics[("sluice_prediction_log_records_total", labels(model="digits"))] == len(log)
    # what the log cost the hub's thread, how long its drains held it, how late the loop ran
    assert metrics[("sluice_monitor_cpu_seconds_total", labels(monitor="prediction_log"))] > 0
    assert metrics[("sluice_monitor_seconds_total", labels(monitor="prediction_log"))] > 0
    assert metrics[("sluice_monitor_drain_seconds_count", labels())] >= 1
    assert metrics[("sluice_event_loop_lag_seconds_count", labels())] >= 1
    assert cli(["logging", "digits", "--json", "--url", digits.address]) == 0
    assert f'"records": {len(log)}' in capsys.readouterr().out


def test_excluded_inputs_are_never_logged(digits):
    with AdminClient(digits.address) as admin:
        settings = admin.set_prediction_logging("digits", sample=1.0, inputs=True,
                                                exclude=["input"])
    assert (settings["sample"], settings["inputs"], settings["exclude"]) == (1.0, True, ["input"])
    x, given = digits_input(1)
    result = tc.InferenceServerClient(digits.address).infer("digits", [given])
    rows = logged(digits)[result.get_response().id]
    assert len(rows) == ROWS and "input_input" not in rows[0]


def test_a_broken_log_directory_never_fails_inference(make_server, repo_copy, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("the log directory cannot be made under a file")
    running = make_server(repo_copy, model_control="explicit", startup_models=("digits",),
                          metrics_port=0, prediction_log_dir=blocker / "predictions")
    client = tc.InferenceServerClient(running.address)
    for i in range(40):
        x, given = digits_input(i)
        assert client.infer("digits", [given]).as_numpy("label").shape == (ROWS, 1)
    flush(running)
    metrics = scrape(running)
    assert metrics[("sluice_prediction_log_dropped_total",
                    labels(model="digits", reason="write_error"))] == 40
    assert ("sluice_prediction_log_records_total", labels(model="digits")) not in metrics


def test_bad_settings_are_refused_naming_what_is_wrong(digits):
    with AdminClient(digits.address) as admin:
        with pytest.raises(InvalidInput, match=r"sample: must be a fraction in \[0, 1\], not 1.5"):
            admin.set_prediction_logging("digits", sample=1.5)
        with pytest.raises(InvalidInput, match="model 'digits' has no input 'pixels'"):
            admin.set_prediction_logging("digits", exclude=["pixels"])
        with pytest.raises(ModelNotFound, match="model 'nope' is not loaded"):
            admin.prediction_logging("nope")
        assert admin.prediction_logging("digits")["source"] == "deployment.yaml"


def test_a_bad_logging_block_leaves_the_model_serving_unlogged(make_server, repo_copy, caplog):
    (repo_copy / "digits" / "deployment.yaml").write_text("logging: {sample: 1, inptus: true}\n")
    running = make_server(repo_copy, model_control="explicit", startup_models=("digits",))
    assert "logging: unknown key 'inptus'" in caplog.text
    _, given = digits_input(0)
    tc.InferenceServerClient(running.address).infer("digits", [given])
    with AdminClient(running.address) as admin:
        assert admin.prediction_logging("digits")["source"] == "off"
    flush(running)  # (other monitors, drift and quality, still watch digits: only files tell)
    assert not list(running.server.config.predictions_dir.glob("model=digits/**/*.parquet"))


def test_failed_requests_are_logged_with_their_status(digits):
    client = tc.InferenceServerClient(digits.address)
    wrong = tc.InferInput("input", [2, 63], "FP32")  # digits takes 64 features
    wrong.set_data_from_numpy(np.zeros((2, 63), dtype=np.float32))
    with pytest.raises(tc.InferenceServerException, match="expected shape"):
        client.infer("digits", [wrong], request_id="bad-shape")
    answers: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    client.async_stream_infer("digits", [wrong])
    _, error = answers.get(timeout=30)
    client.stop_stream()
    assert error is not None
    log = logged(digits)
    [row] = log["bad-shape"]
    assert (row["status"], row["version"], row["output_label"]) == ("INVALID_ARGUMENT", 2, None)
    [(streamed_id, [streamed])] = [(k, v) for k, v in log.items() if k != "bad-shape"]
    assert streamed["status"] == "INVALID_ARGUMENT" and streamed_id
