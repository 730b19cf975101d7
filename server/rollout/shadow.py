"""Shadow execution: mirror a sample of live requests to candidate versions and compare.

The caller never waits on a shadow and never sees one. :meth:`ShadowMirror.begin` (on the request
path, before the live inference) samples each target and puts a copy into a bounded queue with
``put_nowait``: a full queue sheds the copy and counts it. Copies run from worker tasks owned by
the mirror through the candidate's own ``ModelVersion.infer`` at ``SHADOW_PRIORITY``, so the
candidate's admission sheds them before any live traffic, and every copy carries its own deadline
(``shadow_timeout_s``) so shadow work never piles up. :meth:`ShadowMirror.finish` (after the live
inference) only stores the live outcome. When both halves of a pair are in, the pair goes to a
bounded backlog that one comparator task drains in chunks onto one dedicated thread (numpy over
large outputs must not stall the event loop); only the small per-chunk totals are merged back, on
the loop, so the accumulators need no lock. The accumulators and the report they read as are
:mod:`sluice.server.rollout.shadow_stats`; the comparison itself is
:mod:`sluice.server.rollout.comparison`.

Everything here but the comparison thread runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from sluice.server.errors import DeadlineExceeded, Overloaded
from sluice.server.rollout.comparison import Arrays, compare_all, mismatch
from sluice.server.rollout.deployment import ShadowTarget
from sluice.server.rollout.shadow_stats import PairingStats, ShadowReport
from sluice.server.serving.admission import SHADOW_PRIORITY
from sluice.server.serving.instance_thread import InstanceThread
from sluice.server.serving.model import ModelVersion
from sluice.server.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

#: Pairs compared per hop to the comparison thread (amortises the hand-off).
_CHUNK = 8


class _Pair:
    """One mirrored copy: its live and shadow halves meet here (on the loop thread)."""

    __slots__ = ("pairing", "live", "shadow", "live_done", "shadow_done", "outcome")

    def __init__(self, pairing: PairingStats) -> None:
        self.pairing = pairing
        self.live: Arrays | None = None
        self.shadow: Arrays | None = None
        self.live_done = self.shadow_done = False
        #: The candidate's side: None (answered), "" (shed or skipped: nothing to judge), or
        #: the candidate's error message.
        self.outcome: str | None = None


class ShadowMirror:
    """Mirrors live requests to shadow versions and compares the answers. One per server.

    Owns its worker tasks, its comparator task and its comparison thread: they start on the
    first mirrored request (or :meth:`start`) and end in :meth:`close`.
    """

    def __init__(
        self, lookup: Callable[[str, int], ModelVersion | None], *, max_queue: int = 256,
        max_inflight: int = 4, shadow_timeout_s: float = 1.0, tolerance: float = 1e-4,
        window_s: float = 60.0, rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``lookup(name, version)`` returns a loaded version or None (cheap, never awaits).
        ``max_queue`` bounds copies waiting to run and pairs waiting to be compared;
        ``max_inflight`` bounds copies inside candidates at once; ``shadow_timeout_s`` is each
        copy's deadline from :meth:`begin` on ``clock`` (the model versions' clock);
        ``tolerance`` is the absolute difference a row may show and still count as within."""
        self._lookup = lookup
        self.max_queue = max_queue
        self.max_inflight = max_inflight
        self.shadow_timeout_s = shadow_timeout_s
        self.tolerance = tolerance
        self._window_s = window_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._pairings: dict[tuple[str, int, int], PairingStats] = {}
        #: (candidate, copy, pair, the live version's idle event) per copy waiting to run.
        self._queue: asyncio.Queue[tuple[ModelVersion, InferRequest, _Pair, asyncio.Event]]
        self._queue = asyncio.Queue(max_queue)
        self._backlog: deque[tuple[PairingStats, Arrays, Arrays]] = deque()
        self._wake = asyncio.Event()
        self._compared_all = asyncio.Event()  # set while the backlog is empty and merged
        self._compared_all.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: InstanceThread | None = None
        self._closed = False

    # -- request path (synchronous, O(targets), never awaits) --------------------------------

    def begin(
        self, name: str, live: ModelVersion, request: InferRequest,
        targets: tuple[ShadowTarget, ...],
    ) -> tuple[_Pair, ...] | None:
        """Sample ``targets`` and queue a copy of ``request`` for each one sampled; returns the
        token for :meth:`finish`, or None when nothing was mirrored. Never waits: a full queue
        sheds the copy (counted). Targets naming the live version or an unloaded one are
        skipped."""
        if not targets or self._closed:
            return None
        pairs: list[_Pair] = []
        for target in targets:
            if target.version == live.version or (
                target.sample < 1.0 and self._rng.random() >= target.sample
            ):
                continue
            try:
                candidate = self._lookup(name, target.version)
            except Exception:  # a racing unload: the version is simply not there
                candidate = None
            if candidate is None or candidate is live:
                continue
            pairing = self._pairing(name, live.version, target.version)
            pairing.mirrored += 1
            if self._queue.full():
                pairing.shed += 1
                continue
            pair = _Pair(pairing)
            self._queue.put_nowait(
                (candidate, self._copy(request, target.version), pair, live.idle)
            )
            pairs.append(pair)
        if not pairs:
            return None
        if not self._tasks:
            self.start()
        return tuple(pairs)

    def finish(
        self, token: tuple[_Pair, ...] | None, response: InferResponse | None,
        error: BaseException | None, latency_s: float,
    ) -> None:
        """Record the live outcome of ``token`` (from :meth:`begin`). Never raises, never
        waits; the comparison happens later, off the request path."""
        if not token:
            return
        try:
            ok = error is None and response is not None
            for pair in token:
                if pair.live_done:
                    continue
                pair.live_done = True
                if ok:
                    assert response is not None
                    pair.live = response.outputs
                    pair.pairing.live.record(latency_s)
                else:
                    pair.pairing.live_errors += 1
                if pair.shadow_done:
                    self._settle(pair)
        except Exception:  # our bug; the caller's answer must not depend on it
            log.exception("shadow finish failed")

    # -- reading ------------------------------------------------------------------------------

    def report(self, name: str) -> list[ShadowReport]:
        """One report per (live version, shadow version) of ``name``, sorted."""
        return [r for r in self.reports() if r.model == name]

    def reports(self) -> list[ShadowReport]:
        """Every pairing's report, sorted by (model, live version, shadow version): the plain
        data behind the Prometheus families."""
        return [p.report(*key, self.tolerance) for key, p in sorted(self._pairings.items())]

    def reset(self, name: str, shadow_version: int | None = None) -> None:
        """Forget the comparisons of ``name`` (only those against ``shadow_version`` if given).
        Copies already in flight then count nowhere."""
        for key in [k for k in self._pairings if k[0] == name]:
            if shadow_version is None or key[2] == shadow_version:
                del self._pairings[key]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, the comparator and the comparison thread on the running loop."""
        if self._tasks or self._closed:
            return
        self._tasks = [  # tasks first: without a running loop this raises before a thread starts
            asyncio.create_task(self._work(), name=f"shadow:worker:{i}")
            for i in range(self.max_inflight)
        ]
        self._tasks.append(asyncio.create_task(self._compare_loop(), name="shadow:compare"))
        self._thread = InstanceThread("sluice-shadow-compare")

    async def idle(self) -> None:
        """Return once every queued copy has run and every settled pair has been compared
        (pairs still waiting for their live half are not waited for)."""
        await self._queue.join()
        await self._compared_all.wait()

    async def close(self) -> None:
        """Stop mirroring; cancel queued and running copies and pending comparisons; end the
        tasks and the thread. Counts stay readable."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._backlog.clear()
        while not self._queue.empty():  # free the copies' inputs now
            self._queue.get_nowait()
            self._queue.task_done()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.close)  # waits out a comparison in progress
            self._thread = None

    # -- internals ----------------------------------------------------------------------------

    def _pairing(self, name: str, live: int, shadow: int) -> PairingStats:
        key = (name, live, shadow)
        pairing = self._pairings.get(key)
        if pairing is None:
            pairing = self._pairings[key] = PairingStats(self._window_s, self._clock)
        return pairing

    def _copy(self, request: InferRequest, version: int) -> InferRequest:
        # The caller's timeout would bind the copy to the caller's budget; the copy has its own.
        parameters = {k: v for k, v in request.parameters.items() if k != "timeout"}
        return InferRequest(
            model_name=request.model_name, model_version=str(version),
            inputs=dict(request.inputs), id=request.id,
            requested_outputs=request.requested_outputs, parameters=parameters,
            deadline=self._clock() + self.shadow_timeout_s, priority=SHADOW_PRIORITY,
        )

    async def _work(self) -> None:
        queue = self._queue
        while True:
            candidate, copy, pair, live_idle = await queue.get()
            try:
                await self._run_copy(candidate, copy, pair, live_idle)
            except Exception:  # our bug: lose this pair, keep the worker
                log.exception("shadow copy to %s failed", candidate.name)
            finally:
                queue.task_done()

    async def _run_copy(
        self, candidate: ModelVersion, copy: InferRequest, pair: _Pair, live_idle: asyncio.Event,
    ) -> None:
        pairing = pair.pairing
        deadline = copy.deadline
        assert deadline is not None  # _copy always sets one
        if not live_idle.is_set():
            # Shadow work uses the live version's idle time only: wait for it to have nothing
            # queued or computing (the copy's deadline bounds the wait).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live_idle.wait(), deadline - self._clock())
        start = self._clock()
        if pair.live_done and pair.live is None:
            pair.outcome = ""  # the live call already failed: nothing would be judged
        elif deadline <= start:
            pairing.shed += 1  # waited out its deadline in the mirror's queue
            pair.outcome = ""
        else:
            try:
                response = await candidate.infer(copy)
            except (Overloaded, DeadlineExceeded):
                pairing.shed += 1
                pair.outcome = ""
            except Exception as exc:
                pair.outcome = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            else:
                pairing.shadow.record(self._clock() - start)
                pair.shadow = response.outputs
        pair.shadow_done = True
        if pair.live_done:
            self._settle(pair)

    def _settle(self, pair: _Pair) -> None:
        """Both halves are in: judge the candidate when the live call succeeded."""
        pairing, live, shadow, outcome = pair.pairing, pair.live, pair.shadow, pair.outcome
        pair.live = pair.shadow = None
        if live is None or outcome == "":
            return
        if outcome is None and shadow is not None:
            outcome = mismatch(live, shadow)
            if outcome is None:
                pairing.answered += 1
                if len(self._backlog) >= self.max_queue:
                    pairing.dropped += 1
                    return
                self._backlog.append((pairing, live, shadow))
                self._compared_all.clear()
                self._wake.set()
                return
        pairing.candidate_errors += 1
        pairing.last_error = outcome

    async def _compare_loop(self) -> None:
        assert self._thread is not None
        loop = asyncio.get_running_loop()
        tolerance = self.tolerance
        while True:
            if not self._backlog:
                self._compared_all.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            chunk = [self._backlog.popleft() for _ in range(min(_CHUNK, len(self._backlog)))]
            work = [(live, shadow) for _, live, shadow in chunk]
            deltas = await self._thread.run(loop, compare_all, work, tolerance)
            for (pairing, _, _), delta in zip(chunk, deltas, strict=True):
                if delta is None:
                    pairing.dropped += 1
                else:
                    pairing.merge(delta)
