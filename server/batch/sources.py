"""Input files read as numbered chunks of rows: Parquet, CSV and ``.npy``.

Chunk boundaries depend only on the file and ``chunk_rows``, so a resumed job numbers its chunks
as the first run did, and a chunk already done is skipped (Parquet: its row group is not even
read when every chunk of it is done; ``.npy``: memory-mapped, only the rows needed are read;
CSV: parsed, not predicted). Parquet chunks never cross a row group, so a row group that cannot
be read fails with its number and rows, after every chunk before it was handed out.

A chunk may be handed out in pieces (``piece_rows``, Parquet and ``.npy``; a CSV chunk comes
whole): the job predicts the first piece while the next is read, instead of waiting for a whole
chunk (the first one was read with nothing to overlap it: ~1 s of a 20 s ``cnn`` job).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SUFFIXES = (".parquet", ".pq", ".csv", ".npy")


class SourceError(ValueError):
    """The input cannot be read (at all, or from some point on); the message says where."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows ``start .. start + rows - 1`` of the input: chunk ``index``, or a piece of it."""

    index: int
    start: int
    data: pa.Table | np.ndarray
    #: Where the rows are, for messages: "rows 0..65535 (row group 0)".
    where: str
    #: These rows end chunk ``index`` (its pieces come in order, the last one marked).
    last: bool = True

    @property
    def rows(self) -> int:
        return self.data.num_rows if isinstance(self.data, pa.Table) else self.data.shape[0]


def fingerprint(path: Path) -> dict[str, object]:
    """What identifies the input a manifest was written for (a changed file starts over)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class Source:
    """One input file. ``schema`` is None for a ``.npy`` (an array, not columns)."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.kind = path.suffix.lower()
        if self.kind not in SUFFIXES:
            raise SourceError(f"input {path.name}: unknown format (use {', '.join(SUFFIXES)})")
        self.schema: pa.Schema | None = None
        #: Rows in the file, when known without reading it all (Parquet, .npy).
        self.total_rows: int | None = None
        self._array: np.ndarray | None = None
        try:
            if self.kind == ".npy":
                self._array = np.load(path, mmap_mode="r", allow_pickle=False)
                if self._array.ndim < 1:
                    raise SourceError(f"input {path.name}: a 0-d array has no rows")
                self.total_rows = self._array.shape[0]
            elif self.kind == ".csv":
                # types as inferred from the first rows (64 KiB): a bad cell further down is
                # that row's problem, not the column's
                first = pacsv.ReadOptions(block_size=1 << 16)
                with pacsv.open_csv(path, read_options=first) as reader:
                    self.schema = reader.schema
            else:
                self._parquet = pq.ParquetFile(path)
                self.schema = self._parquet.schema_arrow
                self.total_rows = self._parquet.metadata.num_rows
        except SourceError:
            raise
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise SourceError(f"input {path.name} cannot be read: {_reason(exc)}") from None

    @property
    def chunk_count(self) -> int | None:
        if self.kind == ".parquet" or self.kind == ".pq":
            meta = self._parquet.metadata
            return sum(math.ceil(meta.row_group(i).num_rows / self.chunk_rows)
                       for i in range(meta.num_row_groups))
        if self.total_rows is not None:
            return math.ceil(self.total_rows / self.chunk_rows)
        return None

    def chunks(self, columns: list[str], done: Collection[int],
               text_columns: Collection[str] = (), piece_rows: int | None = None
               ) -> Iterator[Chunk]:
        """Every chunk not in ``done``, in order, with only ``columns``; ``text_columns`` of a
        CSV are read as text (parsed row by row later, so one bad cell rejects one row). With
        ``piece_rows``, Parquet and ``.npy`` chunks come in pieces of at most that many rows."""
        piece = min(piece_rows or self.chunk_rows, self.chunk_rows)
        if self._array is not None:
            yield from self._npy(done, piece)
        elif self.kind == ".csv":
            yield from self._csv(columns, done, text_columns)
        else:
            yield from self._pq(columns, done, piece)

    def _npy(self, done: Collection[int], piece: int) -> Iterator[Chunk]:
        assert self._array is not None
        total, size = self._array.shape[0], self.chunk_rows
        for index, first in enumerate(range(0, total, size)):
            if index in done:
                continue
            end = min(first + size, total)
            for start in range(first, end, piece):
                stop = min(start + piece, end)
                try:
                    rows = np.array(self._array[start:stop])
                except (OSError, ValueError) as exc:
                    raise SourceError(f"input {self.path.name}: rows {start}..{stop - 1} "
                                      f"cannot be read: {_reason(exc)}") from None
                yield Chunk(index, start, rows, f"rows {start}..{stop - 1}", stop == end)

    def _pq(self, columns: list[str], done: Collection[int], piece: int) -> Iterator[Chunk]:
        meta = self._parquet.metadata
        index = start = 0
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            count = math.ceil(rows / self.chunk_rows)  # chunks in this group
            first = index
            index += count
            if all(i in done for i in range(first, index)):
                start += rows
                continue
            where = f"row group {group} (rows {start}..{start + rows - 1})"
            batches = self._parquet.iter_batches(
                batch_size=piece, row_groups=[group], columns=columns)
            at = 0  # rows of this group handed out (or skipped)
            try:
                for batch in batches:
                    while batch.num_rows:  # a batch across a chunk's end is cut there
                        ends = min((at // self.chunk_rows + 1) * self.chunk_rows, rows)
                        take = min(batch.num_rows, ends - at)
                        chunk = first + at // self.chunk_rows
                        if chunk not in done:
                            yield Chunk(chunk, start, pa.Table.from_batches(
                                [batch.slice(0, take)]),
                                f"rows {start}..{start + take - 1} ({where})", at + take == ends)
                        batch = batch.slice(take)
                        at += take
                        start += take
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise SourceError(f"input {self.path.name}: {where} cannot be read: "
                                  f"{_reason(exc)}") from None

    def _csv(self, columns: list[str], done: Collection[int], text_columns: Collection[str]
             ) -> Iterator[Chunk]:
        assert self.schema is not None
        types = {name: self.schema.field(name).type for name in columns}
        types |= {name: pa.string() for name in text_columns}
        options = pacsv.ConvertOptions(include_columns=columns, column_types=types,
                                       strings_can_be_null=True)
        pending: list[pa.RecordBatch] = []
        held = index = start = 0
        try:
            with pacsv.open_csv(self.path, convert_options=options) as reader:
                for batch in reader:
                    pending.append(batch)
                    held += batch.num_rows
                    while held >= self.chunk_rows:
                        table = pa.Table.from_batches(pending)
                        chunk, rest = (table.slice(0, self.chunk_rows),
                                       table.slice(self.chunk_rows))
                        if index not in done:
                            yield self._csv_chunk(index, start, chunk)
                        index, start = index + 1, start + self.chunk_rows
                        pending, held = rest.to_batches(), rest.num_rows
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise SourceError(f"input {self.path.name}: cannot be read after row "
                              f"{start + held}: {_reason(exc)}") from None
        if held and index not in done:
            yield self._csv_chunk(index, start, pa.Table.from_batches(pending))
        self.total_rows = start + held

    @staticmethod
    def _csv_chunk(index: int, start: int, table: pa.Table) -> Chunk:
        return Chunk(index, start, table.combine_chunks(),
                     f"rows {start}..{start + table.num_rows - 1}")


def _reason(exc: BaseException) -> str:
    """The library's words without the server's paths."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace(os.getcwd(), ".")
