"""A drain's records kept as columns while requests finish, and read back as records.

The hub used to keep each finished request's :class:`Finished` (its dicts and arrays alive
for a quarter of a second) and its thread then paid, per record, for the monitors' passes, the
encoding and the freeing of ~500 cold records per drain: 3.5 ms of the GIL per drain at identity's
~1,800 requests/s (median, thread CPU, in the server under perf_analyzer at c=64), 30% of it
the freeing. Every request in flight waits through each such stretch. So :meth:`Columns.add`
copies what the monitors read as the record is offered, on the event loop, while it is hot: the
id, times, the (model, version, arm, caller, status) key as runs, each output's bytes appended
to one buffer per output name, and the inputs only of the records whose inputs someone wants
(the prediction log with inputs on, drift's sampled share). The record itself is then freed by
the request path, as with no monitor at all. Measured the same way, the hub's thread then spent
1.5 ms of CPU per drain instead of 3.3-3.6 (two runs of each, side by side).

:class:`Drained` is what the subscribers get: a read-only sequence of :class:`Finished` over one
drain's columns (records are built on demand: drift's sampled rows, an in-process writer) or over
some of its positions (:meth:`Drained.view`: a group, a sample). The hand-over to the monitor
process encodes columns straight from it (:func:`.batch_codec.encode`), never building records.

An output that does not fit its buffer (another dtype or per-row shape than the drain's first,
a 0-d array, memory that is not one C-contiguous block, anything not a numpy array) is kept as
the object it is, for that record.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from sluice.server.monitoring.finished import Finished

#: A record's key: (model, version, arm, caller, status).
Key = tuple[str, int, str, str, str]


class _Joined:
    """One output name's arrays of a drain: their bytes one after another (each of the dtype
    and per-row shape of the first), each one's row count and record position."""

    __slots__ = ("fits", "dtype", "tail", "data", "rows", "at")

    def __init__(self, first: np.ndarray) -> None:
        #: False for objects (BYTES tensors): their buffer holds pointers, not values.
        self.fits = not first.dtype.hasobject
        self.dtype = first.dtype
        self.tail = first.shape[1:]
        self.data = bytearray()
        self.rows = array("q")
        self.at = array("q")


class Columns:
    """The records offered since the last drain, as columns (filled on the event loop)."""

    __slots__ = ("n", "ids", "times", "latencies", "runs", "outputs", "loose", "inputs",
                 "_read")

    def __init__(self) -> None:
        self.n = 0
        self.ids: list[str] = []
        self.times = array("d")
        self.latencies = array("d")
        #: [key, how many records in a row have it]: a drain is nearly always one run.
        self.runs: list[list[Any]] = []
        self.outputs: dict[str, _Joined] = {}
        #: (position, name, value): outputs kept as they are.
        self.loose: list[tuple[int, str, Any]] = []
        #: (position, inputs): the records whose inputs were kept.
        self.inputs: list[tuple[int, dict[str, np.ndarray]]] = []
        self._read: _Reader | None = None

    def add(self, record: Finished, keep_inputs: bool) -> None:
        """Append ``record`` (its inputs too with ``keep_inputs``). A record whose times are
        not numbers raises before any column changes; what comes after cannot raise."""
        n = self.n
        when, latency = float(record.time), float(record.latency_s)
        self.ids.append(record.id)
        self.times.append(when)
        self.latencies.append(latency)
        key = (record.model, record.version, record.arm, record.caller, record.status)
        runs = self.runs
        if runs and runs[-1][0] == key:
            runs[-1][1] += 1
        else:
            runs.append([key, 1])
        outputs = self.outputs
        for name, value in record.outputs.items():
            try:
                joined = outputs.get(name)
                if joined is None:
                    joined = outputs[name] = _Joined(value)
                if joined.fits and value.dtype == joined.dtype and value.shape[1:] == joined.tail:
                    rows = len(value)  # a 0-d array raises here, before anything is kept
                    joined.data.extend(value)  # its bytes, when they are one C-contiguous block
                    joined.rows.append(rows)
                    joined.at.append(n)
                    continue
            except (AttributeError, TypeError, ValueError, BufferError):
                pass
            self.loose.append((n, name, value))
        if keep_inputs and record.inputs:
            self.inputs.append((n, record.inputs))
        self.n = n + 1

    def reader(self) -> _Reader:
        """What reading records back needs (built once, after the drain)."""
        if self._read is None:
            self._read = _Reader(self)
        return self._read


class _Reader:
    """A drained :class:`Columns` laid out for reading: each position's key, each output's
    array with its rows' bounds, loose outputs and inputs by position."""

    def __init__(self, columns: Columns) -> None:
        self.keys: list[Key] = []
        for key, count in columns.runs:
            self.keys.extend([key] * count)
        n = columns.n
        #: name -> (array, starts, ends, position -> index or None when every record has it)
        self.joined: dict[str, tuple[np.ndarray, list[int], list[int], dict[int, int] | None]] = {}
        for name, joined in columns.outputs.items():
            if not joined.at:
                continue
            rows = np.frombuffer(joined.rows, np.int64)
            ends = np.cumsum(rows)
            values = np.frombuffer(joined.data, joined.dtype).reshape(
                int(ends[-1]), *joined.tail)
            index = None if len(joined.at) == n else {p: k for k, p in enumerate(joined.at)}
            self.joined[name] = (values, (ends - rows).tolist(), ends.tolist(), index)
        self.loose: dict[int, list[tuple[str, Any]]] = {}
        for position, name, value in columns.loose:
            self.loose.setdefault(position, []).append((name, value))
        self.inputs = dict(columns.inputs)

    def outputs(self, position: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (values, starts, ends, index) in self.joined.items():
            k = position if index is None else index.get(position)
            if k is not None:
                out[name] = values[starts[k]:ends[k]]
        for name, value in self.loose.get(position, ()):
            out[name] = value
        return out


class Drained(Sequence[Finished]):
    """The records of one drain (or some of them), oldest first, as :class:`Finished` built
    on demand; ``inputs_rate``: per model, the share of records whose inputs were kept."""

    __slots__ = ("columns", "positions", "inputs_rate")

    def __init__(self, columns: Columns, inputs_rate: dict[str, float] | None = None,
                 positions: list[int] | None = None) -> None:
        self.columns = columns
        #: Positions in ``columns`` (None: all of them).
        self.positions = positions
        self.inputs_rate = inputs_rate if inputs_rate is not None else {}

    @classmethod
    def of(cls, records: Sequence[Finished]) -> Drained:
        """``records`` as a drain: a :class:`Drained` as it is (the hub's), a list's records
        copied into new columns with every record's inputs kept."""
        if isinstance(records, Drained):
            return records
        columns = Columns()
        for record in records:
            columns.add(record, True)
        return cls(columns, {record.model: 1.0 for record in records})

    def __len__(self) -> int:
        return self.columns.n if self.positions is None else len(self.positions)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.view(range(len(self))[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} of {n}")
        i %= n
        return self.record(i if self.positions is None else self.positions[i])

    def __iter__(self) -> Iterator[Finished]:
        return map(self.record, self.where())

    def where(self) -> Sequence[int]:
        """The positions in :attr:`columns` this holds."""
        return range(self.columns.n) if self.positions is None else self.positions

    def record(self, position: int) -> Finished:
        """The record at ``position`` of :attr:`columns`."""
        columns = self.columns
        read = columns.reader()
        model, version, arm, caller, status = read.keys[position]
        return Finished(columns.ids[position], columns.times[position], model, version, arm,
                        caller, read.outputs(position), read.inputs.get(position, {}),
                        columns.latencies[position], status)

    def view(self, indices: Sequence[int]) -> Drained:
        """The records at ``indices`` of this one (indices into it, not into the columns)."""
        positions = list(indices) if self.positions is None else [
            self.positions[i] for i in indices]
        return Drained(self.columns, self.inputs_rate, positions)

    def keys(self) -> list[Key]:
        """Each record's (model, version, arm, caller, status)."""
        keys = self.columns.reader().keys
        return keys if self.positions is None else [keys[p] for p in self.positions]

    def groups(self, *, by_arm: bool = False) -> dict[tuple, Drained]:
        """The records by (model, version), or (model, version, arm), each in arrival order."""
        if not len(self):
            return {}
        width = 3 if by_arm else 2
        runs = self.columns.runs
        if self.positions is None and len({run[0][:width] for run in runs}) == 1:
            return {runs[0][0][:width]: self}
        where: dict[tuple, list[int]] = {}
        for i, key in enumerate(self.keys()):
            group = key[:width]
            found = where.get(group)
            if found is None:
                where[group] = [i]
            else:
                found.append(i)
        if len(where) == 1:
            return {next(iter(where)): self}
        return {group: self.view(indices) for group, indices in where.items()}

    def models(self) -> Counter[str]:
        """How many records of each model this holds."""
        if self.positions is None:
            counts: Counter[str] = Counter()
            for key, count in self.columns.runs:
                counts[key[0]] += count
            return counts
        return Counter(key[0] for key in self.keys())

    def with_inputs(self) -> list[int]:
        """Indices (into this) of the records whose inputs were kept."""
        kept = self.columns.inputs
        if self.positions is None:
            return [p for p, _ in kept]
        held = {p for p, _ in kept}
        return [i for i, p in enumerate(self.positions) if p in held]

