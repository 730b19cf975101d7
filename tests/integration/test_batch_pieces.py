"""A batch chunk read and predicted in pieces (the in-process path: the model starts on the
first rows while the next are read) is recorded exactly as the whole chunk was: the same rows
in the same pieces of the file, the same outputs (onnxruntime run directly), rejects, facts and
resumption; a corrupt row group still stops the job naming it, the chunk it cut short not
recorded."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sluice.server.app import BUNDLED_REPOSITORY, make_backend
from sluice.server.batch.job import JobSpec, run_job
from sluice.server.batch.local import LocalPredictor
from sluice.server.batch.progress import Progress
from sluice.server.batch.sources import Source, SourceError

ROWS, GROUP, CHUNK, PIECE = 2500, 1000, 700, 96  # pieces cut across chunk ends on purpose


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    x = np.load(BUNDLED_REPOSITORY / "digits" / "test_split.npz")["X"].astype(np.float32)
    return (np.resize(x, (ROWS, 64)) + (np.arange(ROWS) % 5)[:, None] * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    predictor = LocalPredictor(BUNDLED_REPOSITORY, "digits", make_backend, batch_rows=32)
    yield predictor
    predictor.close()


def _parquet(path, rows: np.ndarray, holes=()) -> None:
    lists = [list(map(float, row)) for row in rows]
    for i in holes:
        lists[i] = None
    pq.write_table(pa.table({"id": np.arange(len(rows)) * 3,
                             "input": pa.array(lists, pa.list_(pa.float32()))}),
                   path, row_group_size=GROUP)


@pytest.mark.parametrize("kind", [".parquet", ".npy"])
def test_pieces_make_up_each_chunk_in_order(tmp_path, rows, kind):
    path = tmp_path / f"in{kind}"
    if kind == ".npy":
        np.save(path, rows)
    else:
        _parquet(path, rows)
    source = Source(path, CHUNK)
    columns = [] if kind == ".npy" else ["id", "input"]
    done = {1, 2}  # chunk 1 ends row group 0 (rows 700..999), chunk 2 starts row group 1

    def values(data):
        if isinstance(data, np.ndarray):
            return data
        return np.stack(data.column("input").to_numpy(zero_copy_only=False))

    whole = {c.index: (c.start, values(c.data)) for c in source.chunks(columns, done)}
    pieces = list(source.chunks(columns, done, piece_rows=PIECE))
    assert max(p.rows for p in pieces) <= PIECE and len(pieces) > 2 * len(whole)
    assert [p.index for p in pieces if p.last] == sorted(whole)  # each chunk ends once, in order
    for index, (start, expected) in whole.items():
        mine = [p for p in pieces if p.index == index]
        assert mine[-1].last and not any(p.last for p in mine[:-1])
        assert mine[0].start == start
        assert [p.start for p in mine[1:]] == [p.start + p.rows for p in mine[:-1]]
        np.testing.assert_array_equal(np.concatenate([values(p.data) for p in mine]), expected)


def _job(tmp_path, name: str, source, predictor, piece_rows, key: str | None = "id"):
    predictor.piece_rows = piece_rows
    out = tmp_path / f"{name}.parquet"
    spec = JobSpec(input=source, output=out, rejects=tmp_path / f"{name}.rejects.csv",
                   key=key, chunk_rows=CHUNK)
    summary = asyncio.run(run_job(spec, predictor))
    manifest = json.loads((tmp_path / f"{name}.parquet.manifest.json").read_text())
    facts = {k: {f: v for f, v in facts.items() if f != "finished_unix"}
             for k, facts in manifest["done"].items()}
    return summary, out, facts


def test_a_job_in_pieces_writes_what_whole_chunks_write(tmp_path, rows, digits):
    holes = (5, 95, 96, 701, 1999, 2000)  # rejects at piece and chunk ends
    _parquet(tmp_path / "in.parquet", rows, holes)
    session = ort.InferenceSession(str(BUNDLED_REPOSITORY / "digits" / "2" / "model.onnx"))
    label, probabilities = session.run(["label", "probabilities"], {"input": rows})

    whole, whole_out, whole_facts = _job(tmp_path, "whole", tmp_path / "in.parquet", digits,
                                         None)
    piece, piece_out, piece_facts = _job(tmp_path, "piece", tmp_path / "in.parquet", digits,
                                         PIECE)
    assert piece.error is None and piece.as_dict() | {"seconds": 0, "rows_per_s": 0} == \
        whole.as_dict() | {"seconds": 0, "rows_per_s": 0}
    assert piece.predicted == ROWS - len(holes) and piece.rejected == {"missing": len(holes)}
    assert piece_facts == whole_facts and len(piece_facts) == 5  # 700 + 300, twice; 500
    table = pq.read_table(piece_out)
    assert table.equals(pq.read_table(whole_out))
    kept = np.setdiff1d(np.arange(ROWS), holes)
    np.testing.assert_array_equal(table.column("id").to_numpy(), kept * 3)
    np.testing.assert_array_equal(table.column("label").to_numpy(), label[kept])
    np.testing.assert_allclose(np.stack(table.column("probabilities").to_numpy(
        zero_copy_only=False)), probabilities[kept], rtol=1e-6, atol=1e-7)
    rejects = pacsv.read_csv(tmp_path / "piece.rejects.csv")
    assert rejects.equals(pacsv.read_csv(tmp_path / "whole.rejects.csv"))
    assert rejects.column("id").to_pylist() == [i * 3 for i in holes]



class _Interrupt(Progress):
    """Cancels the job (as Ctrl-C does) once ``rows`` rows were predicted."""

    def __init__(self, rows: int) -> None:
        super().__init__(stream=io.StringIO())
        self.rows, self.seen, self.task = rows, 0, None

    def advance(self, rows: int) -> None:
        super().advance(rows)
        self.seen += rows
        if self.seen >= self.rows and self.task is not None:
            self.task.cancel()


def test_a_job_interrupted_mid_chunk_resumes_in_pieces(tmp_path, rows, digits):
    _parquet(tmp_path / "in.parquet", rows)
    digits.piece_rows = PIECE
    spec = JobSpec(input=tmp_path / "in.parquet", output=tmp_path / "out.parquet",
                   rejects=tmp_path / "rejects.csv", key="id", chunk_rows=CHUNK)
    stop = _Interrupt(1000 + 2 * PIECE)  # chunk 2 (rows 1000..1699) cut short

    async def interrupted() -> None:
        stop.task = asyncio.ensure_future(run_job(spec, digits, stop))
        with contextlib.suppress(asyncio.CancelledError):
            await stop.task

    asyncio.run(interrupted())
    manifest = tmp_path / "out.parquet.manifest.json"
    first = json.loads(manifest.read_text())["done"]
    assert sorted(map(int, first)) == [0, 1] and not (tmp_path / "out.parquet").exists()

    summary = asyncio.run(run_job(spec, digits))
    assert summary.error is None and summary.chunks_skipped == 2
    assert summary.rows == ROWS and summary.rows_per_s > 0
    after = json.loads(manifest.read_text())["done"]
    assert all(after[k]["finished_unix"] == first[k]["finished_unix"] for k in first)
    table = pq.read_table(tmp_path / "out.parquet")
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(ROWS) * 3)
    session = ort.InferenceSession(str(BUNDLED_REPOSITORY / "digits" / "2" / "model.onnx"))
    (label,) = session.run(["label"], {"input": rows})
    np.testing.assert_array_equal(table.column("label").to_numpy(), label)


def test_a_corrupt_row_group_read_in_pieces_stops_the_job_naming_it(tmp_path):
    identity = LocalPredictor(BUNDLED_REPOSITORY, "identity", make_backend, batch_rows=64)
    try:
        values = np.random.default_rng(5).random((4000, 16), dtype=np.float32)
        path = tmp_path / "in.parquet"
        pq.write_table(pa.table({"INPUT0": pa.FixedSizeListArray.from_arrays(
            pa.array(values.ravel()), 16)}), path, row_group_size=1000, compression="zstd")
        column = pq.ParquetFile(path).metadata.row_group(2).column(0)
        start = column.data_page_offset + 64
        data = bytearray(path.read_bytes())
        data[start:start + 2000] = bytes(2000)
        path.write_bytes(bytes(data))
        summary, out, facts = _job(tmp_path, "out", path, identity, 128, key=None)
    finally:
        identity.close()
    assert "row group 2 (rows 2000..2999) cannot be read" in summary.error
    assert sorted(map(int, facts)) == [0, 1, 2, 3]  # row groups 0 and 1: 700 + 300 rows each
    assert not out.exists()
    with pytest.raises(SourceError):
        list(Source(path, CHUNK).chunks(["INPUT0"], set(), piece_rows=128))
