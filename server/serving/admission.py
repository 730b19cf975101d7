"""Admission: admit a request into its model version's queue, or shed it now.

``ModelVersion.infer`` asks :meth:`Admission.admit` after resolving the version and before
queueing, with no await in between; the answer is synchronous and O(priority levels). In order:

1. draining -> UNAVAILABLE ``draining``;
2. a request larger than a cap it could never fit (queue rows or bytes, the server's in-flight
   bytes) -> RESOURCE_EXHAUSTED naming the limit; a deadline already passed -> DEADLINE_EXCEEDED;
3. deadline feasibility: the time to finish is estimated from the rows queued at the request's
   level or above plus its own, cut into batches and timed by the measured batch durations (see
   :class:`~sluice.server.serving.queues.ServiceRate`), plus the time until an instance is free,
   then scaled by the level's measured estimate error (:meth:`Admission.observe`, a running p90).
   If it cannot finish within ``DEADLINE_SAFETY`` of the time to its deadline -> UNAVAILABLE
   ``deadline``; if it would use more than its
   level's share of the budget (the time to its deadline, else the model's
   ``latency_budget_ms``) -> ``priority``.
   Level 1 of N may use all of the budget, level L ``(N - L + 1) / N`` by default; without a
   deadline, level 1 is never shed by estimate. Until a batch has completed nothing is known,
   and requests are admitted;
4. caps: the level's queue bound (requests) -> ``queue_full``; the model's row and byte bounds,
   making room by evicting the last-served requests of lower levels (they get ``priority``)
   when that suffices, else ``queue_full``; the server's in-flight bytes -> ``queue_full``.

Every shed raises :class:`~sluice.server.errors.Overloaded` with ``retry_after_ms``: the estimated
time for the queue ahead to drain, jittered by +-25% so that shed clients do not return in step.
Nothing here logs: rejecting must stay cheaper than serving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from sluice.server.config.model import ModelConfig, TimeoutAction
from sluice.server.errors import DeadlineExceeded, InvalidInput, Overloaded, ResourceExhausted
from sluice.server.serving.batcher import DynamicBatcher
from sluice.server.serving.budget import InflightBudget
from sluice.server.serving.queues import CoDel, QueueItem

#: ``InferRequest.priority`` of shadow copies: the level below every configured one (N + 1).
SHADOW_PRIORITY = -1
#: Shed reasons for which a model's fallback takes the request instead (never ``draining``).
FALLBACK_REASONS = frozenset({"queue_full", "deadline", "priority", "standing_queue"})
_PUSHBACK_MAX_MS = 60_000
#: Share of the time to its deadline a request's (calibrated) estimated finish may use; the rest
#: is for its answer's way back. Admitting right up to the deadline fills the queue until
#: answers arrive just too late.
DEADLINE_SAFETY = 0.9
#: Quantile of (measured time - estimated time) added to the estimates, its least step
#: (seconds; the step also scales with the value) and its bound.
_ERROR_QUANTILE = 0.9
_ERROR_MIN_STEP_S = 0.0002
_ERROR_MAX_S = 1.0
#: Without answers to learn from (everything shed), the learnt error halves towards 0 every
#: this long: a stale, pessimistic estimate must not lock a model out for good.
_ERROR_HALF_LIFE_S = 0.25


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """The resolved queue rules of one priority level."""

    #: Bound on queued requests at this level.
    max_requests: int
    #: Queue timeout (seconds); None: none.
    timeout_s: float | None
    #: Whether a request's ``timeout`` parameter may shorten ``timeout_s``.
    allow_override: bool
    #: Triton's DELAY action: a timed-out request moves behind its level instead of failing.
    delay: bool
    #: Share of the latency budget this level may use (0, 1].
    budget_fraction: float


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """Everything admission needs from a model's config, resolved once at load."""

    #: Configured Triton levels N (1 when priorities are off); the shadow level is N + 1.
    levels: int
    default_level: int
    #: Index = level (0 unused; levels + 1 is shadow traffic).
    level_policies: tuple[LevelPolicy, ...]
    latency_budget_s: float
    max_queue_rows: int | None
    max_queue_bytes: int | None
    codel_target_s: float | None
    codel_interval_s: float

    @property
    def shadow_level(self) -> int:
        return self.levels + 1

    @property
    def queue_bound(self) -> int:
        """Bound on queued requests over all levels (the batcher's backstop)."""
        return sum(p.max_requests for p in self.level_policies[1:])

    def codel(self) -> CoDel | None:
        """A fresh CoDel for one batcher, or None when the standing-queue rule is off."""
        if self.codel_target_s is None:
            return None
        return CoDel(self.codel_target_s, self.codel_interval_s)

    @classmethod
    def from_config(cls, config: ModelConfig, default_max_queue_size: int) -> AdmissionPolicy:
        batching = config.dynamic_batching
        levels = max(1, batching.priority_levels if batching else 0)
        overload = config.overload
        fractions = overload.priority_budget_fractions or tuple(
            (levels - level + 1) / levels for level in range(1, levels + 1)
        )
        fractions = (*fractions, min(fractions) / 2)  # shadow: below every level
        policies = [LevelPolicy(0, None, True, False, 1.0)]
        for level in range(1, levels + 2):
            rules = batching.policy(level) if batching else None
            policies.append(LevelPolicy(
                max_requests=(rules.max_queue_size if rules else None) or default_max_queue_size,
                timeout_s=rules.default_timeout_us / 1e6
                if rules and rules.default_timeout_us else None,
                allow_override=rules.allow_timeout_override if rules else True,
                delay=rules is not None and rules.timeout_action is TimeoutAction.DELAY,
                budget_fraction=fractions[level - 1],
            ))
        return cls(
            levels=levels,
            default_level=(batching.default_priority_level if batching else 0) or 1,
            level_policies=tuple(policies),
            latency_budget_s=overload.latency_budget_ms / 1000,
            max_queue_rows=overload.max_queue_rows,
            max_queue_bytes=overload.max_queue_bytes,
            codel_target_s=None if overload.codel_target_ms is None
            else overload.codel_target_ms / 1000,
            codel_interval_s=overload.codel_interval_ms / 1000,
        )


class Admission:
    """Admit-or-shed for one model version's batcher. See the module docstring."""

    def __init__(
        self,
        name: str,
        policy: AdmissionPolicy,
        batcher: DynamicBatcher,
        *,
        budget: InflightBudget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._batcher = batcher
        self._queue = batcher.queue
        self._budget = budget
        self._rng = rng or random.Random()
        self._levels = policy.level_policies
        #: Per level: the running p90 of (measured time - estimated time), seconds, >= 0. The
        #: estimate knows the queue ahead and the batch speed; it does not know what overtakes a
        #: request, the event loop's own delays, or a machine that got busier: this learns it.
        #: Added, not multiplied: most of it is a delay per request (the event loop handing the
        #: answer back), which a factor would blow up on long queues and shrink to nothing on an
        #: idle model, shedding the very requests an idle model should take.
        self.error = [0.0] * len(policy.level_policies)
        self._learnt_at = [0.0] * len(policy.level_policies)
        rules = policy.level_policies[policy.default_level]
        #: The default level sets no queue timeout and no budget share: see :meth:`clear_inline`.
        self._plain_default = (
            rules.timeout_s is None and rules.budget_fraction >= 1 and rules.max_requests > 0
        )

    def level(self, priority: int) -> int:
        """Triton's rule: 0 or out of range -> the default level; SHADOW_PRIORITY -> N + 1."""
        if priority == SHADOW_PRIORITY:
            return self.policy.shadow_level
        if 1 <= priority <= self.policy.levels:
            return priority
        return self.policy.default_level

    def deadlines(
        self, level: int, deadline: float | None, timeout_us: Any, now: float
    ) -> tuple[float | None, float | None]:
        """(deadline, expire) for a request at ``level`` arriving at ``now``.

        ``deadline`` is the earliest of the caller's deadline and, with REJECT, the queue
        timeout (the level's default, shortened by the request's ``timeout`` parameter when
        the policy allows); with DELAY the queue timeout becomes ``expire`` instead.
        """
        rules = self._levels[level]
        timeout_s = rules.timeout_s
        if timeout_us is not None:
            if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us < 0:
                raise InvalidInput("parameter 'timeout' must be a non-negative integer (us)")
            if rules.allow_override and timeout_us and (
                timeout_s is None or timeout_us / 1e6 < timeout_s
            ):
                timeout_s = timeout_us / 1e6
        if timeout_s is None:
            return deadline, None
        limit = now + timeout_s
        if rules.delay:
            return deadline, limit
        return (limit if deadline is None else min(deadline, limit)), None

    def admit(
        self, rows: int, nbytes: int, level: int, deadline: float | None, now: float
    ) -> float | None:
        """Admit the request (its bytes now count as in flight) or raise. See the module doc.
        Returns the raw estimate of its time to finish (None: nothing measured yet), for
        :meth:`observe` once it is answered."""
        batcher = self._batcher
        if batcher.closing:
            raise Overloaded(
                f"model '{self.name}' is shutting down", reason="draining", retry_after_ms=1000
            )
        oversize = self._oversize(rows, nbytes)
        if oversize is not None:
            raise oversize
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(f"model '{self.name}': deadline passed before queueing")
        queue = self._queue
        rules = self._levels[level]
        # The request is done when every row ahead of it and its own are computed: batches are
        # cut by rows, so it rides in the last of them (not in a batch after the queue drained).
        estimate = batcher.wait_estimate_s(queue.rows_ahead(level) + rows, now)
        if estimate is not None:
            need = estimate + self._error(level, now)
            allowed: float | None = None
            if deadline is not None:
                left = deadline - now
                if need > left * DEADLINE_SAFETY:
                    raise self._shed(
                        level, "deadline",
                        f"cannot finish by its deadline ({1000 * left:.0f} ms left, about "
                        f"{1000 * need:.0f} ms needed)",
                    )
                allowed = left * rules.budget_fraction
            elif rules.budget_fraction < 1:
                allowed = self.policy.latency_budget_s * rules.budget_fraction
            if allowed is not None and need > allowed:
                raise self._shed(
                    level, "priority",
                    f"priority {level} may use {1000 * allowed:.0f} ms, about "
                    f"{1000 * need:.0f} ms needed",
                )
        if queue.requests_at(level) >= rules.max_requests:
            raise self._shed(
                level, "queue_full", f"queue full ({rules.max_requests} requests at priority "
                f"{level})",
            )
        budget_bytes = self._budget
        if (
            level == self.policy.shadow_level and budget_bytes is not None
            and budget_bytes.limit_bytes is not None
            and budget_bytes.bytes + nbytes > budget_bytes.limit_bytes // 2
        ):  # shadow copies never take the in-flight bytes a live request needs
            raise self._shed(level, "queue_full", "shadow copies may use half of the server's "
                             "in-flight bytes (max_inflight_bytes)")
        if budget_bytes is not None and not budget_bytes.fits(nbytes):
            raise self._shed(
                level, "queue_full",
                f"server in-flight bytes at its limit ({budget_bytes.limit_bytes} bytes, "
                "max_inflight_bytes)",
            )
        self._make_room(rows, nbytes, level)
        if budget_bytes is not None:
            budget_bytes.acquire(nbytes)
        return estimate

    def clear_inline(
        self, rows: int, nbytes: int, deadline: float | None, now: float, compute_s: float
    ) -> bool:
        """Whether a request at the default level with no ``timeout`` parameter, arriving while
        its model is idle and would compute it inline in about ``compute_s``, passes
        :meth:`admit` with nothing in its way: no queue timeout or budget share at that level,
        no cap exceeded, its deadline (if any) farther than the estimate :meth:`admit` would
        make, room in the in-flight budget. Then nothing needs estimating or holding: the
        inline run answers before anything else runs on the loop. False: take :meth:`admit`,
        which says why not."""
        if not self._plain_default:
            return False
        if deadline is not None and (deadline - now) * DEADLINE_SAFETY <= compute_s + self._error(
            self.policy.default_level, now
        ):
            return False
        if self._oversize(rows, nbytes) is not None:
            return False
        return self._budget is None or self._budget.fits(nbytes)

    def observe(self, level: int, estimate: float | None, seconds: float, now: float) -> None:
        """An admitted request was answered ``seconds`` after arrival, at ``now``; ``estimate``
        is what :meth:`admit` returned. One step of a streaming quantile estimate (O(1))."""
        if not estimate or estimate < 1e-4:
            return  # nothing to learn from a request that waited for nothing
        q = self._error(level, now)
        step = max(_ERROR_MIN_STEP_S, 0.05 * q)
        q += step * (_ERROR_QUANTILE if seconds - estimate > q else _ERROR_QUANTILE - 1.0)
        self.error[level] = min(_ERROR_MAX_S, max(0.0, q))
        self._learnt_at[level] = now

    def _error(self, level: int, now: float) -> float:
        """The level's learnt error, decayed towards 0 for the time nothing was learnt. A level
        that learnt nothing lately takes the largest of the others': most of the error is the
        event loop's delay, which every level shares, so a burst of priority-1 traffic after a
        quiet spell starts from what level 2 measured a moment ago, not from 0."""
        q = self._decayed(level, now)
        if now - self._learnt_at[level] > _ERROR_HALF_LIFE_S:
            q = max(q, *(self._decayed(other, now) for other in range(1, len(self.error))))
        return q

    def _decayed(self, level: int, now: float) -> float:
        q = self.error[level]
        idle = now - self._learnt_at[level]
        if q > 0.0 and idle > _ERROR_HALF_LIFE_S:
            q *= 0.5 ** (idle / _ERROR_HALF_LIFE_S)
        return q

    def release(self, nbytes: int) -> None:
        """The admitted request was answered: its bytes no longer count as in flight."""
        if self._budget is not None:
            self._budget.release(nbytes)

    def pushback_ms(self, level: int) -> int:
        """Jittered estimate (ms) of how long the queue ahead of ``level`` takes to drain."""
        estimate = self._batcher.drain_estimate_ms(level)
        return max(1, min(_PUSHBACK_MAX_MS, int(estimate * self._rng.uniform(0.75, 1.25))))

    # -- internals ----------------------------------------------------------------------------

    def _shed(self, level: int, reason: str, why: str) -> Overloaded:
        return Overloaded(
            f"model '{self.name}': {why}", reason=reason, retry_after_ms=self.pushback_ms(level)
        )

    def _oversize(self, rows: int, nbytes: int) -> ResourceExhausted | None:
        """The error for a request larger than a cap it could never fit, or None."""
        policy, name = self.policy, self.name
        if policy.max_queue_rows is not None and rows > policy.max_queue_rows:
            return ResourceExhausted(
                f"model '{name}': request of {rows} rows exceeds the queue's max_queue_rows "
                f"({policy.max_queue_rows})"
            )
        if policy.max_queue_bytes is not None and nbytes > policy.max_queue_bytes:
            return ResourceExhausted(
                f"model '{name}': request of {nbytes} input bytes exceeds the queue's "
                f"max_queue_bytes ({policy.max_queue_bytes})"
            )
        budget = self._budget
        if budget is not None and budget.limit_bytes is not None and nbytes > budget.limit_bytes:
            return ResourceExhausted(
                f"model '{name}': request of {nbytes} input bytes exceeds the server's "
                f"max_inflight_bytes ({budget.limit_bytes})"
            )
        return None

    def _make_room(self, rows: int, nbytes: int, level: int) -> None:
        """Enforce the row and byte bounds, evicting lower levels' requests when that suffices."""
        queue, policy = self._queue, self.policy
        over_rows = (
            queue.rows + rows - policy.max_queue_rows if policy.max_queue_rows is not None else 0
        )
        over_bytes = (
            queue.bytes + nbytes - policy.max_queue_bytes
            if policy.max_queue_bytes is not None else 0
        )
        if over_rows <= 0 and over_bytes <= 0:
            return
        if over_rows > queue.rows_below(level) or (
            over_bytes > 0 and over_bytes > queue.bytes_below(level)
        ):
            limit = "max_queue_rows" if over_rows > 0 else "max_queue_bytes"
            raise self._shed(level, "queue_full", f"queue full ({limit})")
        def error(victim: QueueItem) -> Overloaded:
            return self._shed(victim.level, "priority", f"shed to make room for priority {level}")

        while over_rows > 0 or over_bytes > 0:
            victim = self._batcher.evict(level, error)
            if victim is None:  # cannot happen after the check above; never loop forever
                break
            over_rows -= victim.rows
            over_bytes -= victim.nbytes
