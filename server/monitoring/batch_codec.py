"""A drain of :class:`~.hub.Finished` records as one ``bytes`` object, and back.

This is the monitors' only work on the serving process's GIL once their Python work moved to
the monitor process (:mod:`.monitor_remote`): the hub's thread encodes each drain once and the
process decodes it. Each field is one column (a list or a float64 array); each tensor is one
array, the records' arrays concatenated along the batch axis with each record's row count,
when every record of the drain that has it has it alike (same dtype, same shape past the first
axis); otherwise each record's array travels as is. The columns are pickled (protocol 5). Inputs
travel only for the records ``inputs`` names (the prediction log keeps them for that model).

A :class:`~.drained.Drained` (what the hub hands over) is encoded from its columns: the
outputs are already one buffer per name, so the usual drain costs a pickle of a few arrays and
the ids. Cost, 475 identity answers, outputs only (median of 30): 0.15 ms from the columns
(0.31 us per answer; filling them cost the event loop 1.2 us per answer as each was offered),
against 0.51 ms from a list of records, and 2-3 ms per drain for the log's Arrow conversion and
quality's scoring that encoding replaced on this process.

Promises: ``decode(encode(r))`` equals ``r`` field by field (``parameters`` do not travel: no
monitor reads them); garbage, and bytes of another format version, raise ValueError naming
the cause.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from itertools import groupby

import numpy as np

from sluice.server.monitoring.drained import Drained
from sluice.server.monitoring.finished import Finished

#: Format version, first in every encoded batch.
VERSION = 1

#: A tensor column: ("joined", array, rows per record, who has it) or ("each", arrays) with
#: None where a record lacks it.
_Column = tuple


def encode(records: Sequence[Finished],
           inputs: Callable[[str], bool] = lambda model: False) -> bytes:
    """``records`` as bytes; each record's inputs go along only when ``inputs(model)``. A
    :class:`~.drained.Drained` is encoded from its columns, without building its records."""
    if isinstance(records, Drained):
        return pickle.dumps(_drained(records, inputs), protocol=5)
    n = len(records)
    with_inputs = [i for i, r in enumerate(records) if r.inputs and inputs(r.model)]
    columns = {
        "version": VERSION,
        "n": n,
        "id": [r.id for r in records],
        "time": np.fromiter((r.time for r in records), np.float64, n),
        "latency_s": np.fromiter((r.latency_s for r in records), np.float64, n),
        "model": _runs([r.model for r in records]),
        "model_version": _runs([r.version for r in records]),
        "arm": _runs([r.arm for r in records]),
        "caller": _runs([r.caller for r in records]),
        "status": _runs([r.status for r in records]),
        "outputs": _tensors([r.outputs for r in records]),
        "with_inputs": with_inputs,
        "inputs": _tensors([records[i].inputs for i in with_inputs]),
    }
    return pickle.dumps(columns, protocol=5)


def _drained(records: Drained, inputs: Callable[[str], bool]) -> dict[str, object]:
    """:func:`encode`'s columns of ``records``, from the hub's columns."""
    columns, positions = records.columns, records.positions
    times = np.frombuffer(columns.times, np.float64)
    latencies = np.frombuffer(columns.latencies, np.float64)
    if positions is None:
        ids = columns.ids
        fields = [_merged([(key[j], count) for key, count in columns.runs]) for j in range(5)]
    else:
        ids = [columns.ids[p] for p in positions]
        times, latencies = times[positions], latencies[positions]
        keys = records.keys()
        fields = [_runs([key[j] for key in keys]) for j in range(5)]
    read = columns.reader()
    keys_at = read.keys
    where = records.where()
    with_inputs = [i for i in records.with_inputs() if inputs(keys_at[where[i]][0])]
    return {
        "version": VERSION,
        "n": len(records),
        "id": ids,
        "time": times,
        "latency_s": latencies,
        "model": fields[0],
        "model_version": fields[1],
        "arm": fields[2],
        "caller": fields[3],
        "status": fields[4],
        "outputs": _drained_tensors(records),
        "with_inputs": with_inputs,
        "inputs": _tensors([read.inputs[where[i]] for i in with_inputs]),
    }


def _drained_tensors(records: Drained) -> dict[str, _Column]:
    """The outputs of ``records`` as :func:`_tensors` lays them out, from the joined buffers
    (an output name with loose values travels record by record)."""
    columns, positions = records.columns, records.positions
    read = columns.reader()
    loose = {name for _, name, _ in columns.loose}
    out: dict[str, _Column] = {}
    for name, (values, starts, ends, index) in read.joined.items():
        if name in loose:
            continue
        joined = columns.outputs[name]
        if positions is None:
            who = None if index is None else list(joined.at)
            out[name] = ("joined", values, np.frombuffer(joined.rows, np.int64), who)
            continue
        held = [(i, p if index is None else index.get(p)) for i, p in enumerate(positions)]
        held = [(i, k) for i, k in held if k is not None]
        if not held:
            continue
        rows = np.fromiter((ends[k] - starts[k] for _, k in held), np.int64, len(held))
        who = None if len(held) == len(positions) else [i for i, _ in held]
        out[name] = ("joined", np.concatenate([values[starts[k]:ends[k]] for _, k in held]),
                     rows, who)
    if loose:
        each = [read.outputs(p) for p in records.where()]
        for name in loose:
            arrays = [got.get(name) for got in each]
            if any(a is not None for a in arrays):
                out[name] = ("each", arrays)
    return out


def decode(data: bytes) -> list[Finished]:
    """The records ``data`` holds (ValueError when it is not an encoded batch)."""
    try:
        columns = pickle.loads(data)
        got = columns.get("version") if isinstance(columns, dict) else None
        if got != VERSION:
            raise ValueError(f"batch format version {got!r} is not {VERSION}")
        n = columns["n"]
        models, versions = _expand(columns["model"], n), _expand(columns["model_version"], n)
        arms, callers = _expand(columns["arm"], n), _expand(columns["caller"], n)
        statuses = _expand(columns["status"], n)
        outputs = _untensors(columns["outputs"], n)
        inputs: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        for i, held in zip(columns["with_inputs"],
                           _untensors(columns["inputs"], len(columns["with_inputs"])),
                           strict=True):
            inputs[i] = held
        ids, times, latencies = columns["id"], columns["time"].tolist(), \
            columns["latency_s"].tolist()
    except ValueError:
        raise
    except Exception as exc:  # pickle's and ours: anything that is not a batch
        raise ValueError(f"not an encoded batch: {type(exc).__name__}: {exc}") from None
    return [Finished(ids[i], times[i], models[i], versions[i], arms[i], callers[i], outputs[i],
                     inputs[i], latencies[i], statuses[i]) for i in range(n)]


def _runs(values: list) -> list[tuple[object, int]]:
    """``values`` as (value, how many in a row): a drain is nearly always one model version."""
    if values and values.count(values[0]) == len(values):
        return [(values[0], len(values))]
    return [(value, sum(1 for _ in run)) for value, run in groupby(values)]


def _merged(runs: list[tuple[object, int]]) -> list[tuple[object, int]]:
    """``runs`` with neighbours of one value made one run."""
    out: list[tuple[object, int]] = []
    for value, count in runs:
        if out and out[-1][0] == value:
            out[-1] = (value, out[-1][1] + count)
        else:
            out.append((value, count))
    return out


def _expand(runs: list[tuple[object, int]], n: int) -> list:
    out: list = []
    for value, count in runs:
        out.extend([value] * count)
    if len(out) != n:
        raise ValueError(f"a column holds {len(out)} values for {n} records")
    return out


def _tensors(held: list[dict[str, np.ndarray]]) -> dict[str, _Column]:
    if not held:
        return {}
    first = held[0].keys()
    names = list(first) if all(t.keys() == first for t in held) else list(
        dict.fromkeys(name for tensors in held for name in tensors))
    columns: dict[str, _Column] = {}
    for name in names:
        arrays = [t.get(name) for t in held]
        present = [a for a in arrays if a is not None]
        joined = None
        try:  # one dtype: concatenating promotes nothing; it refuses 0-d arrays and
            # different row shapes
            if len({a.dtype for a in present}) == 1:
                joined = np.concatenate(present)
        except (ValueError, AttributeError):
            pass
        if joined is not None:
            who = None if len(present) == len(arrays) else [
                i for i, a in enumerate(arrays) if a is not None]
            rows = np.fromiter([len(a) for a in present], np.int64, len(present))
            columns[name] = ("joined", joined, rows, who)
        else:
            columns[name] = ("each", arrays)
    return columns


def _untensors(columns: dict[str, _Column], n: int) -> list[dict[str, np.ndarray]]:
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for name, column in columns.items():
        if column[0] == "joined":
            _, joined, rows, who = column
            ends = np.cumsum(rows).tolist()
            starts = [0, *ends[:-1]]
            targets = range(n) if who is None else who
            if len(targets) != len(ends) or (ends and ends[-1] != len(joined)):
                raise ValueError(f"tensor '{name}': row counts do not match its array")
            for i, start, end in zip(targets, starts, ends, strict=True):
                out[i][name] = joined[start:end]
        elif column[0] == "each":
            arrays = column[1]
            if len(arrays) != n:
                raise ValueError(f"tensor '{name}': {len(arrays)} arrays for {n} records")
            for i, array in enumerate(arrays):
                if array is not None:
                    out[i][name] = array
        else:
            raise ValueError(f"tensor '{name}': unknown layout {column[0]!r}")
    return out
