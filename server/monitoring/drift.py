"""Drift and data quality: live inputs and predictions against each version's reference profile.

Owns one :class:`~.drift_window.VersionWindow` per model version that has a reference profile
(``<version>/reference_profile.json``) and drift not turned off in its ``deployment.yaml``
(:mod:`sluice.server.config.drift`). Fed by the :class:`~.hub.MonitorHub`, which keeps the inputs
of ``sample`` of each watched model's finished requests (a random draw per request, as it is
offered: :meth:`~.hub.MonitorHub.want_inputs`); the subscriber takes the answered ones of each
watched version and queues their rows, one block per version and drain; nothing else happens on
the hub's thread.
The monitor's own thread takes the queued rows in every ``intake_s`` (each value coded once by
the Numba kernels, ``sluice.kernels.drift_codes``; this package imports no Numba), and every
``interval_s`` turns each window's counts into PSI, KS, missing and out-of-range rates per
feature, and the prediction's drift (:mod:`.drift_window`). /metrics (:mod:`.drift_metrics`) and
the ``DriftReport`` admin RPC read the last figures.

Where the windows live: in the server, they are kept and coded by drift's worker process
(:mod:`.drift_remote`, at the lowest CPU priority: why, measured, is there); the thread hands
each window's queued rows over and gets its reports back. With kernels injected instead
(tests, benchmarks), the windows are in this process: on the schedule their kernels run in
chunks of ~5 ms at most 15% of one CPU (:class:`~.pacing.DutyCycle`) and the report's Python
in short stretches (:class:`~.pacing.Pacer`); a compute asked for (admin, tests) runs at full
speed.

Promises:
- Nothing here runs on the request path; a request never waits for, or fails because of, drift.
- Every sampled row is either coded into the window and the per-bin counters once, or counted
  (``dropped_rows`` when the queue between two intakes is full or a lost worker took it,
  ``malformed`` when its tensors do not fit the profile).
- A profile that does not match its model fails that model's load, naming the feature
  (:func:`load_version`, called on the loader thread before the version serves).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sluice.server.config.drift import DriftSettings, read_drift
from sluice.server.config.model import ModelConfig
from sluice.server.monitoring.drained import Drained
from sluice.server.monitoring.drift_remote import RemoteWindow
from sluice.server.monitoring.drift_report import DriftReport
from sluice.server.monitoring.drift_window import DriftKernels, VersionWindow
from sluice.server.monitoring.finished import Finished
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.monitoring.pacing import DutyCycle, Pacer
from sluice.server.monitoring.profile import Profile
from sluice.server.monitoring.profile_load import load_profile
from sluice.server.monitoring.worker_process import WorkerGone, WorkerProcess

log = logging.getLogger(__name__)

#: Seconds between two computes of every window's figures.
DEFAULT_INTERVAL_S = 10.0
#: Seconds between two intakes of the queued rows (at most the interval): a short queue, and
#: the kernels' work spread evenly rather than in one burst per interval.
INTAKE_S = 1.0


class DriftMonitor:
    """Every drift window of one server, the hub subscriber that fills them and the thread that
    computes them."""

    def __init__(
        self, hub: MonitorHub, kernels: DriftKernels | None = None, *,
        worker: WorkerProcess | None = None,
        interval_s: float = DEFAULT_INTERVAL_S, intake_s: float = INTAKE_S,
        is_loaded: Callable[[str, int], bool] | None = None,
        clock: Callable[[], float] = time.monotonic, seed: int | None = None,
        pacer: Pacer | None = None, duty: DutyCycle | None = None,
    ) -> None:
        """``kernels``: ``sluice.kernels.drift_codes``, run on this process's threads; or
        ``worker``: the windows are kept and coded in that process
        (:mod:`.drift_remote`: what the server runs). ``is_loaded(model, version)``: whether a
        version serves (reports leave out the rest; None: all). ``seed`` fixes the sampling
        draws (tests). ``pacer`` spreads the scheduled reports (between features) so they never
        hold the GIL long, and ``duty`` the kernels (in chunks, at a share of one CPU:
        :class:`~.pacing.DutyCycle`)."""
        if (kernels is None) == (worker is None):
            raise ValueError("drift needs either its kernels or a worker")
        self._hub = hub
        self._kernels = kernels
        self._worker = worker
        self._interval_s = interval_s
        self._intake_s = min(intake_s, interval_s)
        self._is_loaded = is_loaded
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._pacer = pacer or Pacer()
        self._duty = duty or DutyCycle()
        #: (model, version) -> window; replaced whole (copy on write), so readers need no lock.
        self._windows: dict[tuple[str, int], VersionWindow | RemoteWindow] = {}
        self._changing = threading.Lock()
        self._computing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Intakes and computes that raised, or found the worker lost (logged; the next one
        #: runs as usual).
        self.failures = 0
        hub.subscribe("drift", self.on_finished)

    # -- model load (loader thread) ---------------------------------------------------------

    def load_version(self, config: ModelConfig, version_dir: Path) -> None:
        """Read and check ``version_dir``'s profile and the model's drift settings; watch the
        version when it has a profile and drift is on. ModelLoadError (from the readers) names
        the file and the feature or key. Blocking."""
        profile = load_profile(config, version_dir)
        settings = read_drift(version_dir.parent) if profile is not None else None
        version = int(version_dir.name)
        if profile is None or settings is None:
            self.detach(config.name, version)
            return
        self.attach(config.name, version, profile, settings, batched=config.max_batch_size > 0)

    def attach(self, model: str, version: int, profile: Profile, settings: DriftSettings,
               *, batched: bool = True) -> None:
        """Start a fresh window for ``model`` ``version`` (replacing any)."""
        window: VersionWindow | RemoteWindow
        if self._worker is not None:
            window = RemoteWindow(model, version, profile, settings, batched, self._worker)
        else:
            assert self._kernels is not None
            window = VersionWindow(model, version, profile, settings, batched, self._kernels)
        window.warm()  # the kernels compile (or load) now, on the loader's thread (or worker)
        try:
            window.compute(self._clock())  # the empty window's report: served, no rows yet
        except WorkerGone:
            pass  # logged by the worker's handle; the report comes with the next compute
        with self._changing:
            windows = dict(self._windows)
            if not any(m == model for m, _ in windows):
                self._hub.watch(model)
            windows[(model, version)] = window
            self._windows = windows
            self._want_inputs(model)
        log.info("model '%s' version %d: drift on (%d features, %g of requests sampled, "
                 "window %d rows / %gs)", model, version, len(profile.features), settings.sample,
                 settings.window_rows, settings.window_s)

    def detach(self, model: str, version: int) -> None:
        with self._changing:
            if (model, version) not in self._windows:
                return
            windows = dict(self._windows)
            window = windows.pop((model, version))
            self._windows = windows
            if isinstance(window, RemoteWindow):
                window.detach()
            if not any(m == model for m, _ in windows):
                self._hub.unwatch(model)
            self._want_inputs(model)

    def _want_inputs(self, model: str) -> None:
        """Ask the hub for the inputs of the largest share any of ``model``'s windows samples."""
        rates = [w.settings.sample for (m, _), w in self._windows.items() if m == model]
        self._hub.want_inputs("drift", model, max(rates, default=0.0))

    # -- the hub's thread -------------------------------------------------------------------

    def on_finished(self, batch: Sequence[Finished]) -> None:
        """Hub subscriber: sample each answered record of a watched version into its window."""
        windows = self._windows
        if not windows:
            return
        now = self._clock()
        batch = Drained.of(batch)
        for key, records in batch.groups().items():
            window = windows.get(key)
            if window is None:
                continue
            # the hub kept the inputs of a share of the records (drawn as each was offered):
            # of those, a share that makes the window's sample rate (the hub's rate is never
            # 0: want_inputs forgets a model nobody asks for)
            held = records.with_inputs()
            share = window.settings.sample / batch.inputs_rate.get(key[0], 1.0)
            if share < 1.0:
                held = [held[i] for i in np.flatnonzero(self._rng.random(len(held)) < share)]
            picked = [r for r in map(records.__getitem__, held) if r.status == "OK"]
            if picked:
                window.add_many(picked, now)

    # -- the monitor's thread ---------------------------------------------------------------

    def compute_now(self, *, paced: bool = False) -> list[DriftReport]:
        """Compute every window now (the schedule does this every ``interval_s``, ``paced``)."""
        with self._computing:
            now = self._clock()
            tick = duty = None
            if paced:
                self._pacer.start()
                tick, duty = self._pacer.tick, self._duty
            return [window.compute(now, tick, duty) for window in list(self._windows.values())]

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._main, name="sluice-drift", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._worker is not None:
            self._worker.close(timeout_s)

    def intake_now(self) -> None:
        """Take every window's queued rows in, paced (the schedule does this every
        ``intake_s``)."""
        with self._computing:
            now = self._clock()
            for window in list(self._windows.values()):
                window.ingest(now, self._duty)

    def _main(self) -> None:
        due = time.monotonic() + self._interval_s
        while not self._stop.wait(self._intake_s):
            try:
                if time.monotonic() >= due:
                    due = time.monotonic() + self._interval_s
                    self.compute_now(paced=True)
                else:
                    self.intake_now()
            except WorkerGone as exc:  # logged by the worker's handle; started again later
                self.failures += 1
                log.warning("drift intake skipped: %s", exc)
            except Exception:  # a bug of ours: logged, counted, and the schedule goes on
                self.failures += 1
                log.exception("drift compute failed")

    # -- readers (any thread) ---------------------------------------------------------------

    def reports(self) -> list[DriftReport]:
        """The last figures of every served version with a window, by model and version."""
        out = []
        for (model, version), window in sorted(self._windows.items()):
            if window.report is None:
                continue
            if self._is_loaded is not None and not self._is_loaded(model, version):
                continue
            out.append(window.report)
        return out

    def report(self, model: str) -> list[DriftReport]:
        return [r for r in self.reports() if r.model == model]

    def watched(self, model: str) -> list[int]:
        """The versions of ``model`` that have a drift window."""
        return sorted(v for m, v in self._windows if m == model)
