"""When a batch of one request may run on the event loop instead of an instance thread.

Handing a request to an instance thread and its answer back costs a thread wake-up, a wait for
the GIL and a loop wake-up; for a model that computes in tens of microseconds that costs more
than the model. :class:`InlinePolicy` keeps the smoothed compute time of one-request batches
and says when such a batch may run inline (:meth:`InlinePolicy.estimate_s`,
:meth:`InlinePolicy.allows`). The pool (:class:`~sluice.server.serving.instances.InstancePool`)
does the running, only when nothing is queued or computing.

A time taken on an instance thread includes its wake-up and the GIL wait (a 20 us model timed
100-300 us there), so it may only lower the estimate; an inline run's time, taken where it would
run, can raise it. A model whose threads measure it between the limit and
:data:`INLINE_PROBE_MAX_S` gets one inline run per :data:`INLINE_PROBE_EVERY_S` (a probe), whose
time replaces a larger estimate, so a fast model cannot stay on its threads for good.
"""

from __future__ import annotations

from collections.abc import Callable

#: A request whose one-request batches compute in less than this runs on the event loop when
#: every instance is free: handing it to a thread and back cost about 190 us of CPU per request
#: on the 2-core machine (identity in-process: 400 us through threads, 208 us inline).
INLINE_MAX_S = 100e-6
#: Smoothing of the one-request compute time (weight of the newest batch).
_SINGLE_ALPHA = 0.2
#: A model measured on its threads below this but not below INLINE_MAX_S gets one inline run per
#: INLINE_PROBE_EVERY_S, timed where it would run.
INLINE_PROBE_MAX_S = 4 * INLINE_MAX_S
INLINE_PROBE_EVERY_S = 1.0


class InlinePolicy:
    """Whether a one-request batch of one model may run inline now, from what such batches
    measured. Used on the event loop (decisions, inline times) and by instance threads (their
    times); each update is one float assignment."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: Smoothed compute seconds of batches of one request (None: none measured yet).
        self.single_s: float | None = None
        #: When the next probe may run, and whether one was granted and not yet run.
        self._probe_at = 0.0
        self._probe_granted = False

    def estimate_s(self) -> float | None:
        """The smoothed compute time of one-request batches when it allows an inline run now:
        below :data:`INLINE_MAX_S`, or a probe's turn (:data:`INLINE_PROBE_MAX_S`); None:
        queue it."""
        single = self.single_s
        if single is None or single >= INLINE_PROBE_MAX_S:
            return None
        if single < INLINE_MAX_S:
            return single
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
        if single is None or (single >= INLINE_MAX_S and not probe):
            return False, False
        return True, probe

    def measured(self, run_s: float, *, inline: bool, probe: bool = False) -> None:
        """Smooth in one one-request batch's compute time. A thread's time may only lower the
        estimate; an inline run alone can raise it, and a probe's time replaces a larger
        estimate outright."""
        single = self.single_s
        if single is None or (probe and run_s < single):
            self.single_s = run_s
        elif inline or run_s < single:
            self.single_s = single + _SINGLE_ALPHA * (run_s - single)
