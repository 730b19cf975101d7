"""One batch prediction job: read chunks, predict, write parts, record them, assemble the output.

Three things overlap: the next piece of rows is read and converted on a thread while the current
one is predicted (the backend releases the GIL; a server works meanwhile), and a chunk's part is
written while the next is predicted. A piece is a whole chunk unless the predictor names its
``piece_rows`` (an in-process model does: then the model starts on the first rows at once, not
after a whole chunk is read). Nothing is held beyond two pieces and a chunk's outputs.

Promises:

- the mapping and the column types are checked before the first chunk is read in full;
- a row that cannot be used is rejected with its reason, a request that fails rejects its rows
  with the server's reason, and the job goes on;
- a chunk is recorded only once its part is on disk; a rerun computes only unrecorded chunks;
- an input that cannot be read from some chunk on stops the job with the place named, every
  chunk before it recorded (a rerun, once the file is fixed, computes only the rest).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from sluice.server.batch.columns import InputPlan, Rejects, plan_inputs
from sluice.server.batch.parts import Manifest, output_table
from sluice.server.batch.progress import Progress
from sluice.server.batch.sources import Chunk, Source, SourceError, fingerprint
from sluice.server.types import DATATYPE_DTYPES, TensorSpec

#: (first row, row after the last, reason code, message) of rows a prediction could not answer.
Failure = tuple[int, int, str, str]


class Predictor(Protocol):
    """A model that answers many rows at once (in-process, or a server over a stream)."""

    #: The model's inputs and outputs (dims without the batch dimension).
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: Identifies the model for the manifest ({"model": ..., "version": ...}).
    identity: dict[str, Any]
    # Optional: ``piece_rows`` (int), rows handed to one ``predict`` call (a whole chunk when
    # the predictor has none; the chunk stays the unit that is recorded and resumed).

    async def predict(self, inputs: dict[str, np.ndarray]
                      ) -> tuple[dict[str, np.ndarray], list[Failure]]:
        """Every output for every row of ``inputs``; rows of failed requests hold zeros and
        are named in the failures."""
        ...


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the command line asked for."""

    input: Path
    output: Path
    rejects: Path
    #: Column copied beside the outputs; None writes the row number as column "row".
    key: str | None = None
    #: --map INPUT=COLUMN entries.
    mapping: Mapping[str, str] = field(default_factory=dict)
    chunk_rows: int = 65536
    reject_nan: bool = False
    restart: bool = False


@dataclass(slots=True)
class Summary:
    rows: int = 0
    predicted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    chunks_done: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0
    #: Rows predicted in this run (resumed chunks excluded) per second.
    rows_per_s: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "predicted": self.predicted,
                "rejected": dict(sorted(self.rejected.items())),
                "chunks_done": self.chunks_done, "chunks_skipped": self.chunks_skipped,
                "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1),
                "error": self.error}


@dataclass(frozen=True, slots=True)
class _Prepared:
    chunk: Chunk
    keys: pa.Array
    inputs: dict[str, np.ndarray]
    rejects: Rejects


def open_job(spec: JobSpec, predictor: Predictor) -> tuple[Source, list[InputPlan], Manifest]:
    """Open the input, map its columns and read back (or start) the manifest. Raises
    MappingError, SourceError or ManifestMismatch, before any chunk is read. Blocking."""
    source = Source(spec.input, spec.chunk_rows)
    plans = plan_inputs(predictor.inputs, source.schema, spec.mapping)
    if spec.key is not None and (source.schema is None or spec.key not in source.schema.names):
        raise SourceError(f"--key column '{spec.key}' is not in {spec.input.name}")
    job = {**predictor.identity, "input": fingerprint(spec.input), "chunk_rows": spec.chunk_rows,
           "mapping": {p.spec.name: list(p.columns) for p in plans}, "key": spec.key,
           "reject_nan": spec.reject_nan}
    return source, plans, Manifest.open(spec.output, job, spec.restart)


async def run_job(spec: JobSpec, predictor: Predictor, progress: Progress | None = None
                  ) -> Summary:
    """Run the job to its end (or to an input error, in ``Summary.error``)."""
    started = time.monotonic()
    source, plans, manifest = await asyncio.to_thread(open_job, spec, predictor)
    summary = Summary()
    total = source.chunk_count
    for facts in manifest.done.values():
        summary.rows += facts["rows"]
        summary.predicted += facts["predicted"]
        summary.rejected.update(facts.get("rejected", {}))
    summary.chunks_skipped = len(manifest.done)
    if manifest.complete and spec.output.is_file():
        summary.chunks_done = len(manifest.done)
        return summary
    columns = sorted({c for p in plans for c in p.columns} | ({spec.key} if spec.key else set()))
    text = [c for p in plans if p.spec.datatype not in ("BYTES", "BOOL") for c in p.columns]
    chunks = source.chunks(columns, set(manifest.done), text,
                           getattr(predictor, "piece_rows", None))
    prepare = _preparer(plans, spec)
    if progress is not None:
        progress.start(source.total_rows, summary.rows)

    def read_next() -> _Prepared | None:
        chunk = next(chunks, None)
        return None if chunk is None else prepare(chunk)

    computed = 0
    writing: asyncio.Future[None] | None = None
    reading = asyncio.ensure_future(asyncio.to_thread(read_next))
    held = _Outcome()  # the pieces of the chunk being predicted
    try:
        while True:
            try:
                prepared = await reading
            except SourceError as exc:
                summary.error = str(exc)
                break
            if prepared is None:
                break
            reading = asyncio.ensure_future(asyncio.to_thread(read_next))
            held.add(*await _predict(prepared, predictor, spec))
            if progress is not None:
                progress.advance(prepared.chunk.rows)
            if not prepared.chunk.last:
                continue
            table, rejects, facts = held.whole()
            held = _Outcome()
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(
                manifest.record, prepared.chunk.index, table, rejects, facts))
            summary.rows += facts["rows"]
            summary.predicted += facts["predicted"]
            summary.rejected.update(facts["rejected"])
            computed += facts["predicted"]
    finally:
        if writing is not None:
            await writing
        if not reading.done():
            reading.cancel()
    summary.chunks_done = len(manifest.done)
    count = source.chunk_count
    if summary.error is None and count is not None and len(manifest.done) == count:
        await asyncio.to_thread(manifest.assemble, spec.output, spec.rejects, count)
    elif summary.error is None:
        summary.error = f"{count or total} chunks expected, {len(manifest.done)} done"
    summary.seconds = time.monotonic() - started
    summary.rows_per_s = computed / summary.seconds if summary.seconds > 0 else 0.0
    if progress is not None:
        progress.finish()
    return summary


@dataclass(slots=True)
class _Outcome:
    """What the pieces of one chunk came to, so far."""

    tables: list[pa.Table] = field(default_factory=list)
    rejects: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    predicted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, table: pa.Table, rejects: pa.Table | None, facts: dict[str, Any]) -> None:
        self.tables.append(table)
        if rejects is not None:
            self.rejects.append(rejects)
        self.rows += facts["rows"]
        self.predicted += facts["predicted"]
        self.rejected.update(facts["rejected"])

    def whole(self) -> tuple[pa.Table, pa.Table | None, dict[str, Any]]:
        """The chunk's part, its rejects (None: none) and its facts for the manifest."""
        table = self.tables[0] if len(self.tables) == 1 else pa.concat_tables(self.tables)
        rejects = (None if not self.rejects else self.rejects[0] if len(self.rejects) == 1
                   else pa.concat_tables(self.rejects))
        return table, rejects, {"rows": self.rows, "predicted": self.predicted,
                                "rejected": dict(self.rejected)}


def _preparer(plans: list[InputPlan], spec: JobSpec) -> Callable[[Chunk], _Prepared]:
    def prepare(chunk: Chunk) -> _Prepared:
        rejects = Rejects.none(chunk.rows)
        inputs = {p.spec.name: p.convert(chunk.data, rejects, spec.reject_nan) for p in plans}
        if spec.key is not None and isinstance(chunk.data, pa.Table):
            keys = chunk.data.column(spec.key).combine_chunks()
        else:
            keys = pa.array(np.arange(chunk.start, chunk.start + chunk.rows, dtype=np.int64))
        return _Prepared(chunk, keys, inputs, rejects)
    return prepare


async def _predict(prepared: _Prepared, predictor: Predictor, spec: JobSpec
                   ) -> tuple[pa.Table, pa.Table | None, dict[str, Any]]:
    rejects, keys = prepared.rejects, prepared.keys
    good = ~rejects.bad
    inputs = prepared.inputs
    if not good.all():
        inputs = {k: v[good] for k, v in inputs.items()}
        keys = keys.filter(pa.array(good))
    outputs, failures = await predictor.predict(inputs) if int(good.sum()) else ({}, [])
    if failures:  # rows the model could not answer: rejected with its reason
        failed = np.zeros(int(good.sum()), bool)
        positions = np.flatnonzero(good)
        for first, stop, code, message in failures:
            failed[first:stop] = True
            rejects.add(np.isin(np.arange(len(good)), positions[first:stop]), code, message)
        outputs = {k: v[~failed] for k, v in outputs.items()}
        keys = keys.filter(pa.array(~failed))
    key_name = spec.key or "row"
    if not outputs:
        outputs = {o.name: np.zeros((0, *o.dims), _dtype(o)) for o in predictor.outputs}
    table = output_table(key_name, keys, outputs)
    bad = np.flatnonzero(rejects.bad)
    reject_table = None
    if len(bad):
        reject_table = pa.table({
            key_name: prepared.keys.take(pa.array(bad)),
            "code": [rejects.codes[i] for i in bad],
            "reason": [rejects.messages[i] for i in bad],
        })
    facts = {"rows": prepared.chunk.rows, "predicted": table.num_rows,
             "rejected": dict(Counter(rejects.codes[i] for i in bad))}
    return table, reject_table, facts


def _dtype(spec: TensorSpec) -> np.dtype:
    return DATATYPE_DTYPES[spec.datatype]
