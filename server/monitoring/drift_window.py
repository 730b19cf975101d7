"""One model version's live window: sampled rows in, drift figures out.

The hub's thread hands sampled records to :meth:`VersionWindow.add_many` (rows extracted and
queued, one block per drain when the records are batched alike, nothing computed; a full queue
drops rows and counts them). The drift monitor's own thread calls
:meth:`VersionWindow.compute` on its schedule: the queued rows are binned once into the
cumulative counters (exported per bin, so Prometheus can add replicas up), written into a ring
of the newest ``window_rows`` rows, and the rows of the ring not older than ``window_s`` are
binned and compared with the reference: PSI, KS, missing and out-of-range rates per feature, and
the prediction's drift. The result is an immutable :class:`DriftReport`, published by one
assignment, which /metrics and the admin RPC read without a lock.

Columns are the profile's features in order, then the prediction (when profiled): one float64
row per request row. A column the request lacks (an optional input, an output not requested) is
NaN, counted as missing.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from sluice.server.config.drift import DriftSettings
from sluice.server.monitoring.drift_report import DriftReport, FeatureDrift
from sluice.server.monitoring.drift_rows import record_rows, rows_together
from sluice.server.monitoring.drift_stats import ks_statistic, psi
from sluice.server.monitoring.hub import Finished
from sluice.server.monitoring.pacing import DutyCycle
from sluice.server.monitoring.profile import FeatureProfile, Profile

#: Rows binned, and columns given their KS, per kernel call when the compute is paced.
_ROW_CHUNK = 500
_KS_COLUMNS = 256

#: bin_counts(x, edges, starts, lo, hi, counts, special): ``sluice.kernels.binning.bin_counts``.
BinKernel = Callable[..., None]
#: ks_columns(x, values, starts, cdf, out): ``sluice.kernels.ks.ks_columns`` (every feature's
#: KS statistic in one call, without the GIL); None: NumPy per feature (``drift_stats``).
KsKernel = Callable[..., None]


class VersionWindow:
    """Live rows of one model version and its reference (see the module docstring)."""

    def __init__(
        self, model: str, version: int, profile: Profile, settings: DriftSettings,
        batched: bool, kernel: BinKernel, max_pending_rows: int | None = None,
        ks_kernel: KsKernel | None = None,
    ) -> None:
        """``max_pending_rows``: rows queued between two computes before more are dropped
        (default: the larger of ``window_rows`` and 10000)."""
        self.model, self.version, self.profile, self.settings = model, version, profile, settings
        self._batched = batched
        self._kernel = kernel
        self._columns: list[FeatureProfile] = list(profile.features)
        if profile.prediction is not None:
            self._columns.append(profile.prediction.bins)
        self._ks_kernel = ks_kernel
        # each column's ECDF points for the kernel (none where no KS is reported: a class
        # prediction, or a profile without points)
        kinds = [""] * len(profile.features) + (
            [profile.prediction.kind] if profile.prediction is not None else [])
        ks_points = [c.ks_values.size if k in ("", "value") else 0
                     for c, k in zip(self._columns, kinds, strict=True)]
        self._ks_values = np.concatenate(
            [c.ks_values[:n] for c, n in zip(self._columns, ks_points, strict=True)]
            + [np.zeros(0)]).astype(np.float64)
        self._ks_cdf = np.concatenate(
            [c.ks_cdf[:n] for c, n in zip(self._columns, ks_points, strict=True)]
            + [np.zeros(0)]).astype(np.float64)
        self._ks_starts = np.cumsum([0, *ks_points]).astype(np.int64)
        cols = len(self._columns)
        self._edges = np.concatenate([c.edges for c in self._columns] + [np.zeros(0)])
        self._starts = np.cumsum([0] + [c.edges.size for c in self._columns]).astype(np.int64)
        self._lo = np.array([c.min for c in self._columns], dtype=np.float64)
        self._hi = np.array([c.max for c in self._columns], dtype=np.float64)
        self._width = max((c.edges.size + 1 for c in self._columns), default=1)
        self._ring = np.full((settings.window_rows, cols), np.nan)
        self._times = np.full(settings.window_rows, -np.inf)
        self._head = 0
        self._lock = threading.Lock()
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        self._pending_rows = 0
        self._max_pending = max_pending_rows or max(settings.window_rows, 10_000)
        self.sampled_rows = 0
        self.dropped_rows = 0
        self.malformed = 0
        self._cumulative = np.zeros((cols, self._width), dtype=np.int64)
        self._special = np.zeros((cols, 3), dtype=np.int64)
        #: Each column's edges and reference fractions as the reports carry them (made once).
        self._fixed = [(tuple(c.edges.tolist()), tuple(c.fractions.tolist()))
                       for c in self._columns]
        #: The counters (sampled, dropped, malformed) the last report was computed at, and its
        #: oldest live row's time: a compute with the same counters (so no new row) and no row
        #: aged out keeps that report.
        self._basis: tuple[int, int, int] | None = None
        self._oldest_live = np.inf
        self.report: DriftReport | None = None

    # -- the hub's thread -------------------------------------------------------------------

    def add(self, record: Finished, now: float) -> None:
        """Queue the rows of ``record`` (quick: a reshape and a copy); counted when they do not
        fit the profile or the queue is full."""
        rows = record_rows(self.profile, self._batched, record)
        if rows is None:
            self.malformed += 1
            return
        with self._lock:
            if self._pending_rows + rows.shape[0] > self._max_pending:
                self.dropped_rows += rows.shape[0]
                return
            self._pending.append((now, rows))
            self._pending_rows += rows.shape[0]

    def add_many(self, records: list[Finished], now: float) -> None:
        """:meth:`add` of each of ``records``, as one block of rows when they are batched alike
        and fit the queue whole (a few numpy calls for the lot: one block per drain, binned and
        written to the ring at once), else one by one."""
        rows = rows_together(self.profile, records) if self._batched and len(records) > 1 else None
        if rows is not None:
            with self._lock:
                if self._pending_rows + rows.shape[0] <= self._max_pending:
                    self._pending.append((now, rows))
                    self._pending_rows += rows.shape[0]
                    return
        for record in records:
            self.add(record, now)

    # -- the monitor's thread ---------------------------------------------------------------

    def compute(self, now: float, tick: Callable[[], None] | None = None,
                duty: DutyCycle | None = None) -> DriftReport:
        """Take the queued rows in, recompute the window's figures, publish and return them;
        ``tick`` is called between features (a :class:`~.pacing.Pacer`'s: a model of 784
        features takes tens of milliseconds of Python); with ``duty``, the kernels run in
        chunks of rows (binning) and of columns (KS), each through it (the same figures)."""
        with self._lock:
            pending, self._pending = self._pending, deque()
            self._pending_rows = 0
        for when, rows in pending:
            self._bin(rows, self._cumulative, self._special, duty)
            self.sampled_rows += rows.shape[0]
            self._write(when, rows)
        cutoff = now - self.settings.window_s
        basis = (self.sampled_rows, self.dropped_rows, self.malformed)
        if self.report is not None and basis == self._basis and self._oldest_live >= cutoff:
            return self.report  # nothing came in or aged out: the same figures (an idle model)
        in_window = self._times >= cutoff
        live = self._ring[in_window]
        self._basis = basis
        self._oldest_live = float(self._times[in_window].min()) if live.shape[0] else np.inf
        counts = np.zeros_like(self._cumulative)
        special = np.zeros_like(self._special)
        self._bin(live, counts, special, duty)
        ks = self._ks(live, duty) if self._ks_kernel is not None else None
        drifts = []
        for i, column in enumerate(self._columns):
            drifts.append(self._drift(i, column, live, counts, special, ks))
            if tick is not None:
                tick()
        prediction = self.profile.prediction
        report = DriftReport(
            model=self.model, version=self.version, sample=self.settings.sample,
            window_rows=self.settings.window_rows, window_s=self.settings.window_s,
            rows=live.shape[0], features=tuple(drifts[:len(self.profile.features)]),
            prediction=drifts[-1] if prediction is not None else None,
            prediction_output=prediction.output if prediction is not None else "",
            prediction_kind=prediction.kind if prediction is not None else "",
            sampled_rows=self.sampled_rows, dropped_rows=self.dropped_rows,
            malformed=self.malformed, cumulative=self._cumulative.copy(),
            cumulative_special=self._special.copy(),
        )
        self.report = report
        return report

    def warm(self) -> None:
        """Run the binning kernel once on one row of NaN into scratch counts, so that its
        compile (or load from Numba's cache) happens here, on the loader's thread before the
        version serves, not on the monitor's thread under traffic: measured with py-spy, the
        first compute held the GIL for seconds there and cut identity's throughput."""
        scratch = np.zeros_like(self._cumulative)
        row = np.full((1, self._ring.shape[1]), np.nan)
        self._kernel(row, self._edges, self._starts, self._lo, self._hi, scratch,
                     np.zeros_like(self._special))
        if self._ks_kernel is not None:
            self._ks_kernel(row, self._ks_values, self._ks_starts, self._ks_cdf,
                            np.zeros(row.shape[1]))

    def _bin(self, rows: np.ndarray, counts: np.ndarray, special: np.ndarray,
             duty: DutyCycle | None = None) -> None:
        rows = np.ascontiguousarray(rows)
        step = _ROW_CHUNK if duty is not None else max(rows.shape[0], 1)
        for at in range(0, rows.shape[0], step):
            _call(duty, self._kernel, rows[at:at + step], self._edges, self._starts, self._lo,
                  self._hi, counts, special)

    def _ks(self, live: np.ndarray, duty: DutyCycle | None) -> np.ndarray:
        """Every column's KS from the kernel (NaN: none); with ``duty``, ``_KS_COLUMNS``
        columns at a time (each chunk copied contiguous: the kernel reads rows of a block)."""
        assert self._ks_kernel is not None
        ks = np.full(len(self._columns), np.nan)
        step = _KS_COLUMNS if duty is not None else max(len(self._columns), 1)
        for first in range(0, len(self._columns), step):
            end = first + step  # slices stop at the last column
            _call(duty, self._ks_kernel, np.ascontiguousarray(live[:, first:end]),
                  self._ks_values, self._ks_starts[first:end + 1], self._ks_cdf, ks[first:end])
        return ks

    def _write(self, when: float, rows: np.ndarray) -> None:
        size = self._ring.shape[0]
        rows = rows[-size:]
        at = (self._head + np.arange(rows.shape[0])) % size
        self._ring[at] = rows
        self._times[at] = when
        self._head = int((self._head + rows.shape[0]) % size)

    def _drift(self, i: int, column: FeatureProfile, live: np.ndarray, counts: np.ndarray,
               special: np.ndarray, ks_all: np.ndarray | None) -> FeatureDrift:
        """``ks_all``: every column's KS from the kernel (NaN: none), or None to compute
        this one's with NumPy."""
        bins = column.edges.size + 1
        n = live.shape[0]
        ks = None
        if ks_all is not None:
            ks = None if math.isnan(ks_all[i]) else float(ks_all[i])
        elif self._ks_starts[i + 1] > self._ks_starts[i]:  # a column KS is reported for
            ks = ks_statistic(live[:, i], column.ks_values, column.ks_cdf)
        return FeatureDrift(
            name=column.name, psi=psi(column.fractions, counts[i, :bins]), ks=ks,
            missing_rate=special[i, 0] / n if n else None,
            below_rate=special[i, 1] / n if n else None,
            above_rate=special[i, 2] / n if n else None,
            edges=self._fixed[i][0], reference=self._fixed[i][1],
            live=tuple(counts[i, :bins].tolist()),
        )


def _call(duty: DutyCycle | None, kernel: Callable[..., None], *args: object) -> None:
    """``kernel(*args)``, through ``duty`` when the compute is paced."""
    if duty is None:
        kernel(*args)
    else:
        duty.run(kernel, *args)
