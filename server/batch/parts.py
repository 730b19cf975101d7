"""What a batch job has finished, on disk: one part file per chunk and a manifest beside the output.

``OUTPUT.parts/part-NNNNNN.parquet`` holds a chunk's key column and outputs,
``OUTPUT.parts/rejects-NNNNNN.parquet`` its rejected rows (key, code, reason). A part is written
to a temporary name, flushed and renamed; only then is the chunk recorded in
``OUTPUT.manifest.json`` (rewritten the same way). A crash or Ctrl-C at any instant leaves every
recorded chunk whole: a rerun reads the manifest and computes only the others. When every chunk
is done the parts are assembled, in order, into OUTPUT (Parquet, CSV or .npy) and the rejects
into the reject file; the manifest stays, marked complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

OUTPUT_SUFFIXES = (".parquet", ".pq", ".csv", ".npy")


class ManifestMismatch(ValueError):
    """The manifest beside the output was written for another job."""


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _write_atomically(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


class Manifest:
    """The job's identity (``job``) and its finished chunks (``done``: index -> facts)."""

    def __init__(self, output: Path, job: dict[str, Any]) -> None:
        self.path = manifest_path(output)
        self.parts = parts_dir(output)
        self.job = job
        self.done: dict[int, dict[str, Any]] = {}
        self.complete = False

    @classmethod
    def open(cls, output: Path, job: dict[str, Any], restart: bool) -> Manifest:
        """The manifest of this job: read back (a resumed job, its parts checked) or new."""
        manifest = cls(output, job)
        if restart:
            manifest.path.unlink(missing_ok=True)
            shutil.rmtree(manifest.parts, ignore_errors=True)
        if manifest.path.is_file():
            saved = json.loads(manifest.path.read_text(encoding="utf-8"))
            if saved.get("job") != job:
                differs = sorted(k for k in set(job) | set(saved.get("job", {}))
                                 if job.get(k) != saved.get("job", {}).get(k))
                raise ManifestMismatch(
                    f"{manifest.path.name} was written for another job ({', '.join(differs)} "
                    "differ); pass --restart to start over, or use another --output")
            manifest.complete = bool(saved.get("complete"))
            for key, facts in saved.get("done", {}).items():
                index = int(key)
                if manifest.complete or manifest.part(index).is_file():
                    manifest.done[index] = facts
        manifest.parts.mkdir(parents=True, exist_ok=True)
        return manifest

    def part(self, index: int) -> Path:
        return self.parts / f"part-{index:06d}.parquet"

    def rejects(self, index: int) -> Path:
        return self.parts / f"rejects-{index:06d}.parquet"

    def record(self, index: int, table: pa.Table, rejects: pa.Table | None,
               facts: dict[str, Any]) -> None:
        """Write chunk ``index``'s part (and rejects), then record it. Blocking."""
        if rejects is not None and rejects.num_rows:
            _write_atomically(self.rejects(index), lambda p: pq.write_table(rejects, p))
        _write_atomically(self.part(index), lambda p: pq.write_table(table, p))
        self.done[index] = {**facts, "finished_unix": round(time.time(), 3)}
        self.save()

    def save(self) -> None:
        doc = {"job": self.job, "complete": self.complete,
               "done": {str(k): v for k, v in sorted(self.done.items())}}
        _write_atomically(self.path, lambda p: p.write_text(json.dumps(doc, indent=1)))

    def assemble(self, output: Path, rejects_file: Path, count: int) -> None:
        """Join the ``count`` parts into ``output`` and the rejects into ``rejects_file``, then
        mark the job complete and remove the parts. Blocking."""
        parts = [self.part(i) for i in range(count)]
        _write_atomically(output, lambda p: _join(parts, p, output.suffix.lower()))
        found = [self.rejects(i) for i in range(count) if self.rejects(i).is_file()]
        rejects_file.unlink(missing_ok=True)
        if found:
            _write_atomically(rejects_file, lambda p: _join(found, p, ".csv"))
        self.complete = True
        self.save()
        shutil.rmtree(self.parts, ignore_errors=True)


def _join(parts: list[Path], target: Path, kind: str) -> None:
    if kind == ".npy":
        tables = [pq.read_table(p) for p in parts]
        column = tables[0].schema.names[-1]  # the one output, after the key
        arrays = [_numpy(t.column(column)) for t in tables]
        with open(target, "wb") as f:  # a file object: np.save adds no '.npy' to it
            np.save(f, np.concatenate(arrays) if arrays else np.zeros((0,)), allow_pickle=False)
        return
    writer: Any = None
    try:
        for path in parts:
            table = pq.read_table(path)
            if kind == ".csv":
                table = _flat_columns(table)
                writer = writer or pacsv.CSVWriter(target, table.schema)
            else:
                writer = writer or pq.ParquetWriter(target, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1)
    return array.to_numpy(zero_copy_only=False)


def _flat_columns(table: pa.Table) -> pa.Table:
    """CSV holds no lists: a list output becomes columns NAME_0 .. NAME_{n-1}."""
    names, columns = [], []
    for name, column in zip(table.schema.names, table.columns, strict=True):
        if pa.types.is_fixed_size_list(column.type):
            values = _numpy(column)
            for i in range(values.shape[1]):
                names.append(f"{name}_{i}")
                columns.append(pa.array(values[:, i]))
        else:
            names.append(name)
            columns.append(column)
    return pa.table(columns, names=names)


def output_table(key_name: str, keys: pa.Array, outputs: dict[str, np.ndarray]) -> pa.Table:
    """A chunk's part: the key column, then each output (one value per row as a scalar column,
    more as a fixed-size list, row-major)."""
    names, columns = [key_name], [keys]
    for name, value in outputs.items():
        rows = value.shape[0]
        flat = value.reshape(rows, -1)
        if value.dtype == np.dtype(object):
            values = pa.array(flat.ravel().tolist(), pa.binary())
        else:
            values = pa.array(flat.ravel())
        if flat.shape[1] == 1:
            columns.append(values)
        else:
            columns.append(pa.FixedSizeListArray.from_arrays(values, flat.shape[1]))
        names.append(name)
    return pa.table(columns, names=names)
