"""Retry policy shared by :class:`~clients.Client` and :class:`~clients.AsyncClient`.

The policy decides; the clients only call and sleep. Per request, :meth:`RetryPolicy.begin`
returns a :class:`RetryCall` that knows the overall deadline and says, after each failure,
either "wait this many seconds and send again" or raises the error to give up.

Rules (all times in seconds unless the name says otherwise):

* Only UNAVAILABLE (:class:`~sluice.clients.errors.Overloaded`) is retried; every other error is
  raised at once, after exactly one attempt.
* Full-jitter exponential backoff: retry *k* (0-based) waits ``uniform(0, min(max, base * 2**k))``.
  When the server sent ``grpc-retry-pushback-ms``, the wait is at least that, jittered up to
  +20% so that shed clients do not come back in lockstep. A negative pushback means "do not
  retry" (as in gRPC's own retry design).
* The timeout covers every attempt and every wait: no retry is started whose wait would end at
  or after the deadline; the last Overloaded is raised instead.
* A deadline that passes during a wait anyway (the sleep overslept) also raises the last
  Overloaded, with its pushback and attempt count: the caller learns why it waited, not that a
  timer ran late. :class:`~sluice.clients.errors.DeadlineExceeded` means only that the deadline
  passed before any attempt failed, or that an attempt itself ran out of time on the wire.
* A client spread over replicas (:mod:`sluice.clients.replicas`) retries a "draining" refusal
  at once, with the plain backoff: gRPC's balancer sends the retry to another replica, so the
  pushback of the one shutting down does not apply to it.
* A :class:`RetryBudget` caps retries at a fraction (10%) of first attempts, so that retries
  can never multiply the load on an overloaded server.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import grpc

from sluice.clients.errors import DeadlineExceeded, Overloaded, SluiceClientError

__all__ = ["RetryBudget", "RetryCall", "RetryPolicy"]

_PUSHBACK_JITTER = 0.2


class RetryBudget:
    """Token bucket limiting retries to ``ratio`` of first attempts.

    Each first attempt deposits ``ratio`` tokens, each retry spends one; the bucket holds at most
    ``max_tokens`` and starts full. Over any run of N requests, retries are therefore at most
    ``ratio * N + max_tokens``. Thread-safe; one budget may be shared by several clients.
    """

    def __init__(self, ratio: float = 0.1, max_tokens: float = 10.0) -> None:
        if ratio < 0 or max_tokens < 0:
            raise ValueError("ratio and max_tokens must be >= 0")
        self.ratio = ratio
        self.max_tokens = max_tokens
        self._tokens = max_tokens
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        """Tokens available now (each retry needs one)."""
        return self._tokens

    def deposit(self) -> None:
        """Record one first attempt."""
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        """Take one token for a retry; False (and nothing taken) when less than one is left."""
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class RetryPolicy:
    """How a client retries; one per client, shared by all its requests (and thread-safe).

    ``retries`` is the most retries per request (so at most ``retries + 1`` attempts).
    ``rng`` and ``clock`` (a monotonic clock in seconds) are injectable for tests. ``spread``:
    the client's calls are balanced over several replicas (a draining one's pushback is not
    waited out: the retry goes elsewhere).
    """

    def __init__(
        self,
        retries: int = 3,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 2.0,
        budget: RetryBudget | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        spread: bool = False,
    ) -> None:
        if retries < 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("retries and backoff times must be >= 0")
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.budget = budget if budget is not None else RetryBudget()
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()
        self.clock = clock
        self.spread = spread

    def begin(self, timeout: float | None) -> RetryCall:
        """Start one request whose attempts and waits must all fit in ``timeout`` seconds
        (None: no deadline). Counts as a first attempt for the budget.
        """
        self.budget.deposit()
        deadline = None if timeout is None else self.clock() + timeout
        return RetryCall(self, deadline)

    def delay(self, retry_index: int, pushback_ms: int | None) -> float:
        """Seconds to wait before retry number ``retry_index`` (0-based)."""
        with self._rng_lock:
            cap = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry_index)
            wait = self._rng.uniform(0.0, cap)
            if pushback_ms is not None:
                pushback = pushback_ms / 1000.0
                wait = max(wait, pushback * self._rng.uniform(1.0, 1.0 + _PUSHBACK_JITTER))
        return wait


class RetryCall:
    """The retry state of one request: its deadline, how many attempts were made, and the last
    Overloaded it was handed (the error to raise if the deadline passes while waiting)."""

    def __init__(self, policy: RetryPolicy, deadline: float | None) -> None:
        self._policy = policy
        self.deadline = deadline
        self.attempts = 0
        self._last_overloaded: Overloaded | None = None

    def time_left(self) -> float | None:
        """The timeout for the next attempt in seconds (None: no deadline); counts the attempt.

        When the deadline has already passed, nothing is counted and this raises the last
        Overloaded (the deadline passed while waiting to retry it), or DeadlineExceeded when no
        attempt has failed yet.
        """
        left = None if self.deadline is None else self.deadline - self._policy.clock()
        if left is not None and left <= 0:
            if self._last_overloaded is not None:
                raise self._last_overloaded
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"client deadline passed after {self.attempts} attempt(s)",
                attempts=self.attempts,
            )
        self.attempts += 1
        return left

    def after_failure(self, error: SluiceClientError) -> float:
        """Seconds to wait before the next attempt, or raise ``error`` to give up.

        Gives up when the error is not Overloaded, the server asked not to retry, the retries
        are spent, the wait would reach the deadline, or the retry budget is empty.
        """
        error.attempts = self.attempts
        if not isinstance(error, Overloaded):
            raise error
        self._last_overloaded = error
        pushback = error.retry_after_ms
        retry_index = self.attempts - 1
        if (pushback is not None and pushback < 0) or retry_index >= self._policy.retries:
            raise error
        if self._policy.spread and error.reason == "draining":
            pushback = None  # the balancer sends the retry to another replica
        wait = self._policy.delay(retry_index, pushback)
        if self.deadline is not None and self._policy.clock() + wait >= self.deadline:
            raise error
        if not self._policy.budget.try_spend():
            raise error
        return wait
