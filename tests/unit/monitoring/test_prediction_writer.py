"""The prediction log's writer: records round-trip through Parquet exactly (read back with
pyarrow.dataset and Hive partitions, as pandas and DuckDB read them), files rotate by size and
by age and every rotated file reads back whole, and a full queue or a broken disk drops records
and counts them, each under its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from sluice.server.config.model import ModelConfig
from sluice.server.config.prediction_logging import LoggingConfig
from sluice.server.monitoring.hub import Finished, MonitorHub
from sluice.server.monitoring.prediction_log import PredictionLog
from sluice.server.monitoring.prediction_schema import RecordSchema
from sluice.server.monitoring.prediction_settings import LoggingSettings
from sluice.server.monitoring.prediction_writer import PredictionWriter
from sluice.server.types import TensorSpec
from tests.support.fake_clock import FakeClock

DIGITS = ModelConfig(
    name="digits", max_batch_size=256,
    inputs=(TensorSpec("input", "FP32", (64,)), TensorSpec("ssn", "BYTES", (1,))),
    outputs=(TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP32", (10,)),
             TensorSpec("tokens", "INT32", (-1,))),
)
DAY = 1_780_000_000.0  # 2026-05-28T20:26:40Z


def record(i: int, rows: int, *, status: str = "OK", t: float = DAY) -> Finished:
    rng = np.random.default_rng(i)
    ok = status == "OK"
    return Finished(
        id=f"r{i}", time=t + i * 1e-3, model="digits", version=2, arm="", caller="",
        outputs={
            "label": np.arange(rows, dtype=np.int64).reshape(rows, 1) + i,
            "probabilities": rng.random((rows, 10), dtype=np.float32),
            "tokens": np.full((rows, i % 3), i, dtype=np.int32),
        } if ok else {},
        inputs={"input": rng.random((rows, 64), dtype=np.float32),
                "ssn": np.array([[b"123-45-%04d" % i]] * rows, dtype=object)},
        latency_s=0.001 * i, status=status,
    )


def read(root: Path) -> pa.Table:
    return ds.dataset(root, format="parquet", partitioning="hive").to_table().sort_by(
        [("id", "ascending"), ("row", "ascending")])


def writer(root: Path, clock: FakeClock | None = None, **kwargs) -> PredictionWriter:
    return PredictionWriter(root, tag="t", clock=clock or FakeClock(), **kwargs)


def test_records_read_back_exactly_one_row_per_request_row(tmp_path):
    out = writer(tmp_path)
    records = [record(1, 3), record(2, 1), record(3, 2, status="UNAVAILABLE")]
    schema = RecordSchema(DIGITS, LoggingConfig(1.0, inputs=True, exclude=("ssn",)))
    out.put("digits", schema, records)
    out.close()
    table = read(tmp_path)
    assert out.written == {"digits": 3} and not out.dropped
    assert "input_ssn" not in table.column_names  # excluded, though inputs are kept
    assert table.schema.field("output_probabilities").type == pa.list_(pa.float32(), 10)
    assert table.schema.field("output_tokens").type == pa.list_(pa.int32())
    assert table.schema.field("output_label").type == pa.int64()
    rows = table.to_pylist()
    assert [(r["id"], r["row"]) for r in rows] == [
        ("r1", 0), ("r1", 1), ("r1", 2), ("r2", 0), ("r3", 0)]
    assert {r["model"] for r in rows} == {"digits"}
    assert {str(r["date"]) for r in rows} == {"2026-05-28"}
    for r in rows[:4]:
        source = records[0] if r["id"] == "r1" else records[1]
        n = r["row"]
        assert r["output_label"] == source.outputs["label"][n, 0]
        np.testing.assert_array_equal(np.float32(r["output_probabilities"]),
                                      source.outputs["probabilities"][n])
        np.testing.assert_array_equal(r["output_tokens"], source.outputs["tokens"][n])
        np.testing.assert_array_equal(np.float32(r["input_input"]), source.inputs["input"][n])
        assert r["status"] == "OK" and r["version"] == 2
        assert r["time"].timestamp() == pytest.approx(source.time, abs=1e-6)
    failed = rows[4]
    assert failed["status"] == "UNAVAILABLE" and failed["output_label"] is None
    assert failed["output_probabilities"] is None and failed["input_input"] is None
    assert failed["latency_s"] == pytest.approx(0.003)


def test_outputs_only_by_default_and_bytes_inputs_as_binary(tmp_path):
    assert [f.name for f in RecordSchema(DIGITS, LoggingConfig(1.0)).schema][8:] == [
        "output_label", "output_probabilities", "output_tokens"]
    out = writer(tmp_path)
    out.put("digits", RecordSchema(DIGITS, LoggingConfig(1.0, inputs=True)), [record(7, 2)])
    out.close()
    table = read(tmp_path)
    assert table.schema.field("input_ssn").type == pa.binary()
    assert table.column("input_ssn").to_pylist() == [b"123-45-0007"] * 2


def test_files_rotate_by_size_and_every_file_reads_back_whole(tmp_path):
    out = writer(tmp_path, batch_records=50, max_file_bytes=40_000)
    schema = RecordSchema(DIGITS, LoggingConfig(1.0, inputs=True))
    for start in range(0, 400, 50):
        out.put("digits", schema, [record(i, 2) for i in range(start, start + 50)])
        out.flush() if start == 350 else out._serve(flush=False)
    files = sorted((tmp_path / "model=digits").rglob("*.parquet"))
    assert len(files) >= 3, files
    assert not list(tmp_path.rglob("*.inprogress"))
    for f in files:
        assert ds.dataset(f).count_rows() > 0
    table = read(tmp_path)
    assert table.num_rows == 800 and len(set(table.column("id").to_pylist())) == 400
    assert out.written == {"digits": 400} and out.files.files_closed == len(files)


def test_files_rotate_by_age_and_by_date(tmp_path):
    clock = FakeClock()
    out = writer(tmp_path, clock, batch_records=1, max_file_age_s=60.0)
    schema = RecordSchema(DIGITS, LoggingConfig(1.0))
    out.put("digits", schema, [record(1, 1)])
    out._serve(flush=False)
    assert out.files.open_count == 1 and not list(tmp_path.rglob("*.parquet"))
    clock.advance(61.0)
    out.put("digits", schema, [record(2, 1)])
    out._serve(flush=False)  # the first file is 61 s old: closed; the second just opened
    assert len(list(tmp_path.rglob("*.parquet"))) == 1
    out.put("digits", schema, [record(3, 1, t=DAY + 86400)])  # the next UTC day
    out.close()
    dates = sorted(p.parent.name for p in tmp_path.rglob("*.parquet"))
    assert dates == ["date=2026-05-28", "date=2026-05-28", "date=2026-05-29"]
    assert read(tmp_path).column("id").to_pylist() == ["r1", "r2", "r3"]


def test_a_full_queue_drops_and_counts(tmp_path):
    out = writer(tmp_path, capacity_records=5)
    schema = RecordSchema(DIGITS, LoggingConfig(1.0))
    assert out.put("digits", schema, [record(i, 1) for i in range(3)]) == 3
    assert out.put("digits", schema, [record(i, 1) for i in range(3, 7)]) == 2
    assert out.dropped == {("digits", "queue_full"): 2}
    out.close()
    assert out.written == {"digits": 5}


def test_a_broken_disk_drops_and_counts_and_the_log_recovers(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log's directory should be")
    out = writer(blocker / "predictions")
    schema = RecordSchema(DIGITS, LoggingConfig(1.0))
    out.put("digits", schema, [record(i, 1) for i in range(4)])
    out.flush()
    assert out.dropped == {("digits", "write_error"): 4} and not out.written
    blocker.unlink()  # the disk is back
    out.put("digits", schema, [record(9, 1)])
    out.close()
    assert out.written == {"digits": 1}
    assert read(blocker / "predictions").column("id").to_pylist() == ["r9"]


def test_sampling_keeps_each_request_with_its_probability(tmp_path):
    """Seeded draws, so the count is exact here; the bound is what any seed meets with
    probability 1 - 6e-7: |kept - n p| <= 5 sqrt(n p (1 - p))."""
    import random

    hub = MonitorHub()
    log = PredictionLog(hub, writer(tmp_path), LoggingSettings(None),
                        lambda name, version: DIGITS, uniform=random.Random(7).random)
    log.model_loaded("digits", LoggingConfig(0.25))
    assert hub.wants("digits") and not hub.wants("other")
    n, p = 4000, 0.25
    for i in range(n):
        hub.offer(record(i, 1))
    hub.drain()
    kept = log.writer.queued
    assert abs(kept - n * p) <= 5 * (n * p * (1 - p)) ** 0.5, kept
    log.model_loaded("digits", None)  # yaml block gone, no admin settings: off, unwatched
    assert not hub.wants("digits")
    log.close()
    assert log.writer.written == {"digits": kept}


def test_one_row_requests_with_arms_that_differ_read_back_exactly(tmp_path):
    """The batch-1 shortcut (no per-row repetition) and string columns that are not all equal
    (arms, callers) against the records themselves."""
    out = writer(tmp_path)
    records = [record(i, 1) for i in range(6)]
    for i, r in enumerate(records):
        r.arm, r.caller = ("stable", "candidate")[i % 2], f"caller{i // 3}"
    out.put("digits", RecordSchema(DIGITS, LoggingConfig(1.0)), records)
    out.close()
    rows = read(tmp_path).to_pylist()
    assert [(r["id"], r["row"], r["arm"], r["caller"], r["status"]) for r in rows] == [
        (f"r{i}", 0, ("stable", "candidate")[i % 2], f"caller{i // 3}", "OK") for i in range(6)]
    assert [r["output_label"] for r in rows] == [int(r.outputs["label"][0, 0]) for r in records]
    assert [r["latency_s"] for r in rows] == [r.latency_s for r in records]


def test_put_converts_the_records_so_the_writer_holds_none_of_them(tmp_path):
    """The Arrow conversion happens in ``put``, on the caller's (the hub's) thread: arrays the
    records point to can change, or go, once it returns, and the file has what was put."""
    out = writer(tmp_path)
    records = [record(i, 2) for i in range(3)]
    put = [r.outputs["label"].copy() for r in records]
    assert out.put("digits", RecordSchema(DIGITS, LoggingConfig(1.0)), records) == 3
    assert out.queued == 3
    for r in records:
        r.outputs["label"][:] = -1
    out.close()
    rows = read(tmp_path).to_pylist()
    assert [r["output_label"] for r in rows] == [int(v) for p in put for v in p[:, 0]]


def test_a_record_that_does_not_fit_its_schema_loses_only_itself(tmp_path):
    out = writer(tmp_path)
    records = [record(i, 1) for i in range(5)]
    records[2].outputs["probabilities"] = np.array([["not a number"] * 10], dtype=object)
    assert out.put("digits", RecordSchema(DIGITS, LoggingConfig(1.0)), records) == 4
    assert out.dropped == {("digits", "encode_error"): 1}  # counted by put, before any write
    out.close()
    assert out.written == {"digits": 4}
    assert read(tmp_path).column("id").to_pylist() == ["r0", "r1", "r3", "r4"]


def test_only_the_few_valued_columns_are_dictionary_encoded(tmp_path):
    """Ids, times and tensors are mostly distinct: a dictionary for them costs CPU and bytes
    (prediction_schema.DICTIONARY_COLUMNS says how much); version, arm, caller, status get one."""
    import pyarrow.parquet as pq

    out = writer(tmp_path)
    out.put("digits", RecordSchema(DIGITS, LoggingConfig(1.0, inputs=True)),
            [record(i, 2) for i in range(20)])
    out.close()
    (path,) = tmp_path.rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata
    names = meta.schema.to_arrow_schema().names
    chunks = meta.row_group(0)
    dictionary = {
        chunks.column(i).path_in_schema.split(".")[0]
        for i in range(chunks.num_columns)
        if any("DICTIONARY" in e for e in chunks.column(i).encodings)
    }
    assert dictionary == {"version", "arm", "caller", "status"}, dictionary
    assert {"id", "time", "latency_s", "output_probabilities", "input_input"} <= set(names)
