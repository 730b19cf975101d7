"""When a batch of one request may run on the event loop instead of an instance thread.

Handing a request to an instance thread and its answer back costs a thread wake-up, a wait for
the GIL and a loop wake-up; for a model that computes in tens of microseconds that costs more
than the model. :class:`InlinePolicy` keeps the smoothed compute time of one-request batches
and the smoothed cost of the hand-off itself, and lets such a batch run inline when it computes
faster than the hand-off costs (:meth:`InlinePolicy.estimate_s`, :meth:`InlinePolicy.allows`).
The pool (:class:`~sluice.server.serving.instances.InstancePool`) does the running, only when
nothing is queued or computing, and times the hand-off: a request queued while the pool was idle
and answered alone from a thread took ``answered - queued - compute`` seconds more than its
compute (:meth:`InlinePolicy.handed_off`). The limit is that measured cost, not a constant:
it was 190 us of CPU per request on the 2-core development machine (identity in-process: 400 us
through threads, 208 us inline) and is a few tens of microseconds on a fast idle one.

A time taken on an instance thread includes its wake-up and the GIL wait (a 20 us model timed
100-300 us there), so it may only lower the estimate; an inline run's time, taken where it would
run, can raise it. A model whose threads measure it between the limit and
:data:`INLINE_PROBE_MAX_S` gets one inline run per :data:`INLINE_PROBE_EVERY_S` (a probe), whose
time replaces a larger estimate, so a fast model cannot stay on its threads for good.

An inline run's wall time can also hold a stall that is not the model's: after the model
returns, the loop thread waits for the GIL, which another Python thread (the monitor hub's 50 ms
drain, a prediction-log write) may hold for a switch interval, milliseconds. One such sample
used to lift the estimate over the limit and send every request to the threads until the next
probe (identity with all monitors on: 12-13 us of instance-thread CPU per request instead of
4, throughput 0.83 of monitors off). So an inline sample counts for at most
:data:`INLINE_RISE_FACTOR` x the estimate: a stall moves it by a fraction, while a model that
really became slower still climbs past the limit within a dozen runs (x1.2 per run).
"""

from __future__ import annotations

from collections.abc import Callable

#: The limit before any hand-off was timed.
INLINE_MAX_S = 100e-6
#: Bounds of the measured limit: no hand-off is believed cheaper than INLINE_MIN_S (two thread
#: wake-ups and a loop wake-up), and nothing slower than INLINE_CAP_S runs on the loop, however
#: starved the machine that timed the hand-off.
INLINE_MIN_S = 20e-6
INLINE_CAP_S = 500e-6
#: Smoothing of the one-request compute time and of the hand-off (weight of the newest sample).
_SINGLE_ALPHA = 0.2
#: A model measured on its threads below PROBE_FACTOR x the limit but not below the limit gets
#: one inline run per INLINE_PROBE_EVERY_S, timed where it would run.
PROBE_FACTOR = 4.0
INLINE_PROBE_EVERY_S = 1.0
#: One inline sample counts for at most this many times the current estimate.
INLINE_RISE_FACTOR = 2.0


class InlinePolicy:
    """Whether a one-request batch of one model may run inline now, from what such batches
    measured. Used on the event loop (decisions, inline times) and by instance threads (their
    times); each update is one float assignment."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: Smoothed compute seconds of batches of one request (None: none measured yet).
        self.single_s: float | None = None
        #: Smoothed extra seconds of a one-request batch answered from a thread (None: not
        #: timed yet).
        self.handoff_s: float | None = None
        #: A fixed limit instead of the measured one (benchmarks and tests that pin the path).
        self.fixed_limit_s: float | None = None
        #: When the next probe may run, and whether one was granted and not yet run.
        self._probe_at = 0.0
        self._probe_granted = False

    @property
    def limit_s(self) -> float:
        """One-request batches computing faster than this run inline: the hand-off's measured
        cost, within [:data:`INLINE_MIN_S`, :data:`INLINE_CAP_S`]."""
        if self.fixed_limit_s is not None:
            return self.fixed_limit_s
        handoff = self.handoff_s
        if handoff is None:
            return INLINE_MAX_S
        return min(max(handoff, INLINE_MIN_S), INLINE_CAP_S)

    def estimate_s(self) -> float | None:
        """The smoothed compute time of one-request batches when it allows an inline run now:
        below :attr:`limit_s`, or a probe's turn (below :data:`PROBE_FACTOR` x the limit);
        None: queue it."""
        single = self.single_s
        if single is None:
            return None
        limit = self.limit_s
        if single < limit:
            return single
        if single >= PROBE_FACTOR * limit:
            return None
        now = self._clock()
        if now < self._probe_at:
            return None
        self._probe_at = now + INLINE_PROBE_EVERY_S
        self._probe_granted = True
        return single

    def allows(self) -> tuple[bool, bool]:
        """(whether a request may run inline now, whether that run is a granted probe); takes
        the grant, if any."""
        single = self.single_s
        probe = self._probe_granted
        self._probe_granted = False
        if single is None or (single >= self.limit_s and not probe):
            return False, False
        return True, probe

    def measured(self, run_s: float, *, inline: bool, probe: bool = False) -> None:
        """Smooth in one one-request batch's compute time. A thread's time may only lower the
        estimate; an inline run alone can raise it (by at most :data:`INLINE_RISE_FACTOR`
        x the estimate), and a probe's time replaces a larger estimate outright."""
        single = self.single_s
        if single is None or (probe and run_s < single):
            self.single_s = run_s
        elif run_s < single:
            self.single_s = single + _SINGLE_ALPHA * (run_s - single)
        elif inline:  # a rise, bounded: a GIL stall after the run is no slower model
            self.single_s = single + _SINGLE_ALPHA * (
                min(run_s, INLINE_RISE_FACTOR * single) - single)

    def handed_off(self, overhead_s: float) -> None:
        """Smooth in what one request queued to an idle pool took beyond its compute."""
        handoff = self.handoff_s
        if handoff is None:
            self.handoff_s = overhead_s
        else:
            self.handoff_s = handoff + _SINGLE_ALPHA * (overhead_s - handoff)
