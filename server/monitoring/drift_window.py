"""One model version's live window: sampled rows in, drift figures out.

The hub's thread hands sampled records to :meth:`VersionWindow.add_many` (rows extracted and
queued, one block per drain when the records are batched alike, nothing computed; a full queue
drops rows and counts them). The drift monitor's own thread takes the queue in every second or
so (:meth:`VersionWindow.ingest`): each new value is coded once by the kernels
(``sluice.kernels.drift_codes``: its PSI bin, range flag and KS cell), added to the cumulative
counters (exported per bin, so Prometheus can add replicas up) and stored in a ring of the
newest ``window_rows`` rows, whose per-bin and per-cell counts are kept up to date as rows enter,
are overwritten, or grow older than ``window_s``. On its schedule the thread turns those counts
into figures (:meth:`VersionWindow.compute`): PSI, KS, missing and out-of-range rates per
feature, and the prediction's drift, a walk over the counts whatever the window's size. The
result is an immutable :class:`~.drift_report.DriftReport`, published by one assignment, which
/metrics and the admin RPC read without a lock.

Columns are laid out by :mod:`.drift_layout`: one float64 row per request row. A column the
request lacks (an optional input, an output not requested) is NaN, counted as missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

from sluice.server.config.drift import DriftSettings
from sluice.server.monitoring.drift_layout import layout
from sluice.server.monitoring.drift_queue import Block, RowQueue
from sluice.server.monitoring.drift_report import DriftReport, FeatureDrift
from sluice.server.monitoring.drift_stats import psi_rows
from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.pacing import DutyCycle
from sluice.server.monitoring.profile import Profile

#: Values (rows x columns) coded, or evicted, per kernel call when paced: ~3 ms of kernel. A
#: call takes every row of a block for a range of columns (see ``sluice.kernels.drift_codes``).
_CHUNK_VALUES = 100_000
#: Most values queued blocks are copied together into, to be coded as one (16 MiB of float64,
#: so that the copy stays bounded; cnn queues ~1M values a second).
_GROUP_VALUES = 1 << 21


class DriftKernels(Protocol):
    """``sluice.kernels.drift_codes``, handed over by the composition root (this package
    imports no Numba)."""

    GUIDE_CELLS: int
    ks_guide: Callable[..., None]
    encode_rows: Callable[..., None]
    evict_rows: Callable[..., None]
    ks_from_cells: Callable[..., None]


class VersionWindow:
    """Live rows of one model version and its reference (see the module docstring)."""

    def __init__(
        self, model: str, version: int, profile: Profile, settings: DriftSettings,
        batched: bool, kernels: DriftKernels, max_pending_rows: int | None = None,
    ) -> None:
        """``max_pending_rows``: see :class:`~.drift_queue.RowQueue`."""
        self.model, self.version, self.profile, self.settings = model, version, profile, settings
        self._kernels = kernels
        self._layout = layout(profile, kernels.ks_guide, kernels.GUIDE_CELLS)
        cols = len(self._layout.columns)
        size = settings.window_rows
        self._codes = np.zeros((size, cols), dtype=np.uint32)
        self._times = np.full(size, -np.inf)
        self._kept = np.zeros(size, dtype=np.bool_)
        self._head = 0
        #: Rows queued by the hub's thread, and the rows counted instead (dropped, malformed).
        self.queue = RowQueue(profile, batched, size, max_pending_rows)
        self.sampled_rows = 0
        self.evicted_rows = 0
        width = self._layout.width
        # every sampled row (the exported counters), and the window's rows
        self._cumulative = np.zeros((cols, width), dtype=np.int64)
        self._special = np.zeros((cols, 3), dtype=np.int64)
        self._counts = np.zeros((cols, width), dtype=np.int64)
        self._window_special = np.zeros((cols, 3), dtype=np.int64)
        self._cells = np.zeros(self._layout.cells, dtype=np.int64)
        #: The counters (sampled, dropped, malformed, evicted) the last report was computed at:
        #: a compute with the same counters (no row came in, was counted or left) keeps it.
        self._basis: tuple[int, int, int, int] | None = None
        self.report: DriftReport | None = None

    # -- the hub's thread -------------------------------------------------------------------

    def add_many(self, records: list[Finished], now: float) -> None:
        """Queue the rows of ``records`` (see :meth:`.RowQueue.add_many`)."""
        self.queue.add_many(records, now)

    # -- the monitor's thread ---------------------------------------------------------------

    def ingest(self, now: float, duty: DutyCycle | None = None,
               blocks: Iterable[Block] | None = None) -> None:
        """Take the queued rows in (coded into the ring and the counters), or ``blocks`` when
        given (queued elsewhere: drift's worker process), and let rows older than ``window_s``
        leave; with ``duty``, the kernels run in chunks through it."""
        pending = self.queue.take() if blocks is None else blocks
        most = min(self._codes.shape[0], max(1, _GROUP_VALUES // max(self._codes.shape[1], 1)))
        together: list[tuple[float, np.ndarray]] = []
        held = 0
        for when, rows in pending:  # coded in groups that fit the ring and _GROUP_VALUES
            if together and held + rows.shape[0] > most:
                self._encode(together, duty)
                together, held = [], 0
            together.append((when, rows))
            held += rows.shape[0]
            self.sampled_rows += rows.shape[0]
        if together:
            self._encode(together, duty)
        aged = np.flatnonzero(self._kept & (self._times < now - self.settings.window_s))
        if aged.size:
            self._evict(aged, duty)

    def compute(self, now: float, tick: Callable[[], None] | None = None,
                duty: DutyCycle | None = None,
                blocks: Iterable[Block] | None = None) -> DriftReport:
        """:meth:`ingest` (of ``blocks`` when given), then the window's figures from its
        counts, published and returned; ``tick`` is called between features (a
        :class:`~.pacing.Pacer`'s: making a report of 3,072 features takes milliseconds of
        Python)."""
        self.ingest(now, duty, blocks)
        queue = self.queue
        basis = (self.sampled_rows, queue.dropped_rows, queue.malformed, self.evicted_rows)
        if self.report is not None and basis == self._basis:
            return self.report  # nothing came in, was counted or left: the same figures
        self._basis = basis
        lay = self._layout
        n = int(np.count_nonzero(self._kept))
        psis = psi_rows(lay.reference, self._counts).tolist()
        ks = np.full(len(lay.columns), np.nan)
        self._kernels.ks_from_cells(self._cells, lay.ks_starts, lay.ks_cdf,
                                    n - self._window_special[:, 0], ks)
        rates = (self._window_special / n).tolist() if n else None
        counts = self._counts.tolist()
        drifts = []
        for i, column in enumerate(lay.columns):
            value, stat = psis[i], float(ks[i])
            drifts.append(FeatureDrift(
                name=column.name, psi=None if value != value else value,
                ks=None if stat != stat else stat,
                missing_rate=rates[i][0] if rates else None,
                below_rate=rates[i][1] if rates else None,
                above_rate=rates[i][2] if rates else None,
                edges=lay.fixed[i][0], reference=lay.fixed[i][1],
                live=tuple(counts[i][:lay.bins[i]]),
            ))
            if tick is not None:
                tick()
        prediction = self.profile.prediction
        report = DriftReport(
            model=self.model, version=self.version, sample=self.settings.sample,
            window_rows=self.settings.window_rows, window_s=self.settings.window_s,
            rows=n, features=tuple(drifts[:len(self.profile.features)]),
            prediction=drifts[-1] if prediction is not None else None,
            prediction_output=prediction.output if prediction is not None else "",
            prediction_kind=prediction.kind if prediction is not None else "",
            sampled_rows=self.sampled_rows, dropped_rows=queue.dropped_rows,
            malformed=queue.malformed, cumulative=self._cumulative.copy(),
            cumulative_special=self._special.copy(),
        )
        self.report = report
        return report

    def warm(self) -> None:
        """Run each kernel once, on a row of NaN coded into no slot, so that its compile (or
        load from Numba's cache) happens here, on the loader's thread before the version
        serves, not on the monitor's thread under traffic: measured with py-spy, the first
        compute held the GIL for seconds there and cut identity's throughput."""
        lay = self._layout
        row = np.full((1, len(lay.columns)), np.nan)
        nowhere = np.full(1, -1, dtype=np.int64)
        scratch = np.zeros_like(self._cumulative), np.zeros_like(self._special)
        every = len(lay.columns)
        self._kernels.encode_rows(row, nowhere, self._codes, *lay.kernel_args, *scratch,
                                  *scratch, np.zeros_like(self._cells), 0, every)
        self._kernels.evict_rows(nowhere, self._codes, lay.edges, lay.starts, lay.ks_values,
                                 lay.ks_starts, lay.guide, *scratch, np.zeros_like(self._cells),
                                 0, every)
        self._kernels.ks_from_cells(self._cells, lay.ks_starts, lay.ks_cdf,
                                    np.zeros(len(lay.columns), dtype=np.int64),
                                    np.zeros(len(lay.columns)))

    def _encode(self, blocks: list[tuple[float, np.ndarray]], duty: DutyCycle | None) -> None:
        """Code ``blocks`` (arrival time, rows) into the next slots of the ring: the rows there
        leave first, and rows beyond the ring's size count in the cumulative counters only.
        Blocks within the ring's size and :data:`_GROUP_VALUES` (or one larger block) get
        distinct slots, so that they are coded as one array (a copy of ~8 MB a second for
        cnn), after the rows leaving are taken out, in one pass over each range of columns:
        per block, the server's drains of a few requests each made ~10x the kernel calls,
        each fetching its columns' tables for a few rows."""
        size = self._codes.shape[0]
        slots = []
        for when, rows in blocks:
            n = rows.shape[0]
            keep = min(n, size)
            at = (self._head + np.arange(keep)) % size
            slots.append(np.full(n - keep, -1, dtype=np.int64))
            slots.append(at)
            self._times[at] = when
            self._head = int((self._head + keep) % size)
        where = np.concatenate(slots)
        placed = where[where >= 0]
        gone = placed[self._kept[placed]]
        self._kept[placed] = True
        self.evicted_rows += int(gone.size)
        # float64 always: the kernels were compiled for it at warm(); another dtype would
        # compile on this thread, under traffic
        rows = np.concatenate([r for _, r in blocks], dtype=np.float64)
        lay = self._layout
        for first, last in self._column_ranges(rows.shape[0] + gone.size, duty):
            if gone.size:  # the rows leaving are counted out before their slots are rewritten
                self._evict_columns(gone, first, last, duty)
            _call(duty, self._kernels.encode_rows, rows, where, self._codes, *lay.kernel_args,
                  self._cumulative, self._special, self._counts, self._window_special,
                  self._cells, first, last)

    def _evict(self, slots: np.ndarray, duty: DutyCycle | None) -> None:
        """Take the rows at ``slots`` out of the window's counts."""
        for first, last in self._column_ranges(slots.size, duty):
            self._evict_columns(slots, first, last, duty)
        self._kept[slots] = False
        self.evicted_rows += int(slots.size)

    def _evict_columns(self, slots: np.ndarray, first: int, last: int,
                       duty: DutyCycle | None) -> None:
        """Take columns ``first:last`` of the rows at ``slots`` out of the window's counts."""
        lay = self._layout
        _call(duty, self._kernels.evict_rows, slots, self._codes, lay.edges, lay.starts,
              lay.ks_values, lay.ks_starts, lay.guide, self._counts, self._window_special,
              self._cells, first, last)

    def _column_ranges(self, rows: int, duty: DutyCycle | None) -> list[tuple[int, int]]:
        """Kernel calls for ``rows`` rows: every column at once, or ranges of columns of
        ~``_CHUNK_VALUES`` values each when paced (each call takes all the rows, so that a
        column's tables are fetched once for all of them)."""
        cols = len(self._layout.columns)
        step = cols if duty is None else max(1, _CHUNK_VALUES // max(rows, 1))
        return [(first, min(first + step, cols)) for first in range(0, max(cols, 1), step)]


def _call(duty: DutyCycle | None, kernel: Callable[..., None], *args: object) -> None:
    """``kernel(*args)``, through ``duty`` when the compute is paced."""
    if duty is None:
        kernel(*args)
    else:
        duty.run(kernel, *args)
