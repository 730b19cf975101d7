"""The retraining pipeline's reading of the prediction log, the feedback log and the owner's
data files (sluice.server.retrain.data), against files written in the logs' layout."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from sluice.server.retrain import data
from tests.support.retrain_logs import finished, write_feedback, write_prediction_log


def _rows(start: int, rows: int) -> np.ndarray:
    """Rows whose first feature is their global index (the join is checked by it)."""
    x = np.zeros((rows, 4), np.float32)
    x[:, 0] = np.arange(start, start + rows)
    return x


def test_logged_requests_join_their_labels_per_request_and_per_row(tmp_path):
    logs, feedback = tmp_path / "log", tmp_path / "feedback"
    write_prediction_log(logs, [
        finished("a", _rows(0, 2)),        # rows 0, 1: one label for both
        finished("b", _rows(2, 3)),        # rows 2, 3, 4: row 1 labelled alone, others by id
        finished("c", _rows(5, 1)),        # no label yet
        finished("d", _rows(6, 1), status="UNAVAILABLE"),  # failed: never used
    ])
    write_prediction_log(logs, [finished("e", _rows(7, 2))], name="part-1.parquet",
                         keep_inputs=False)  # inputs not kept: counted, not used
    write_feedback(feedback, "digits", [("a", 3), ("b", 5), ("b", 1, 7), ("zzz", 1),
                                        ("d", 2)])
    (logs / "model=digits" / f"date={dt.date.today()}" / ".part-9.parquet.inprogress"
     ).write_bytes(b"being written")  # the log's file in progress: never read
    joined = data.join_logged(logs, feedback, "digits", "input", 4)
    order = np.argsort(joined.x[:, 0])
    assert joined.x[order, 0].tolist() == [0, 1, 2, 3, 4]
    assert joined.y[order].tolist() == [3, 3, 5, 7, 5]
    assert joined.x.dtype == np.float32 and joined.y.dtype == np.int64
    assert (joined.requests, joined.without_inputs, joined.unlabelled_rows) == (4, 1, 1)
    # "zzz" and the failed request "d" match no successful logged request
    assert joined.unknown_ids == 2
    assert joined.relabelled == 0


def test_the_last_label_received_wins_then_the_last_written(tmp_path):
    logs, feedback = tmp_path / "log", tmp_path / "feedback"
    write_prediction_log(logs, [finished("a", _rows(0, 1)), finished("b", _rows(1, 1))])
    # File names do not order labels; received_at does, then the position in a file.
    write_feedback(feedback, "digits", [("b", 9)], name="part-0.parquet", received_s=300)
    write_feedback(feedback, "digits", [("a", 2), ("b", 4)], name="part-1.parquet",
                   received_s=200)
    write_feedback(feedback, "digits", [("a", 1), ("a", 0, 5), ("a", 0, 6)],
                   name="part-2.parquet", received_s=100)
    whole, per_row, repeats = data.read_feedback(feedback, "digits")
    assert (whole, per_row, repeats) == ({"a": 2, "b": 9}, {("a", 0): 6}, 3)
    joined = data.join_logged(logs, feedback, "digits", "input", 4)
    by_row = dict(zip(joined.x[:, 0].tolist(), joined.y.tolist(), strict=True))
    assert by_row == {0.0: 6, 1.0: 9}  # a row's own label beats its request's


def test_partitions_outside_the_window_are_not_read(tmp_path):
    today = dt.date(2026, 3, 10)
    for days_ago in (0, 6, 7, 30):
        write_prediction_log(tmp_path, [finished(f"r{days_ago}", _rows(0, 1))],
                             day=today - dt.timedelta(days=days_ago))
    (tmp_path / "model=digits" / "date=garbage").mkdir()
    files = data.partition_files(tmp_path, "digits", 7, today=today)
    assert [f.parent.name for f in files] == ["date=2026-03-04", "date=2026-03-10"]
    assert len(data.partition_files(tmp_path, "digits", None)) == 4
    assert data.partition_files(tmp_path, "other", None) == []


def test_a_file_that_is_not_parquet_is_named_in_the_error(tmp_path):
    part = tmp_path / "model=digits" / "date=2026-01-01"
    part.mkdir(parents=True)
    (part / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(data.DataError, match=r"^model=digits/date=2026-01-01/broken.parquet: "
                       "not a readable Parquet file"):
        data.read_logged_inputs(tmp_path, "digits", "input", 4)


def test_feedback_without_a_label_column_or_with_text_labels_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = tmp_path / "model=digits" / "date=2026-01-01"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "value": [1.0]}), part / "a.parquet")  # no label
    with pytest.raises(data.DataError, match="a.parquet: no column 'label'"):
        data.read_feedback(tmp_path, "digits")
    (part / "a.parquet").unlink()
    pq.write_table(pa.table({"id": ["a"], "label": ["seven"]}), part / "b.parquet")
    with pytest.raises(data.DataError, match="b.parquet: column 'label' holds 'seven'"):
        data.read_feedback(tmp_path, "digits")


def test_training_data_reads_npz_and_parquet_and_names_what_is_missing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.savez(tmp_path / "t.npz", X=x, y=np.array([0, 1, 2]))
    got_x, got_y = data.read_xy(tmp_path / "t.npz", tmp_path)
    assert got_x.dtype == np.float32 and np.array_equal(got_x, x)
    assert got_y.tolist() == [0, 1, 2]
    pq.write_table(pa.table({"features": x.tolist(), "label": [2, 1, 0]}), tmp_path / "t.parquet")
    got_x, got_y = data.read_xy(tmp_path / "t.parquet", tmp_path)
    assert np.array_equal(got_x, x) and got_y.tolist() == [2, 1, 0]
    np.savez(tmp_path / "nolabel.npz", X=x)
    with pytest.raises(data.DataError, match=r"nolabel.npz: no array 'y'"):
        data.read_xy(tmp_path / "nolabel.npz", tmp_path)
    np.savez(tmp_path / "short.npz", X=x, y=np.array([0, 1]))
    with pytest.raises(data.DataError, match="short.npz: X has 3 rows but y has 2"):
        data.read_xy(tmp_path / "short.npz", tmp_path)
    with pytest.raises(data.DataError, match="^absent.npz: no such file"):
        data.read_xy(tmp_path / "absent.npz", tmp_path)
