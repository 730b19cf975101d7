"""Per-principal request quotas: one token bucket each.

A bucket holds up to ``burst`` requests' worth and refills at ``rate_per_s``; a request takes
one or is refused (RESOURCE_EXHAUSTED at the door, never queued). The clock is the caller's
(monotonic seconds), so tests drive it by hand. Not thread-safe: the gRPC event loop owns
every bucket.
"""

from __future__ import annotations

from sluice.server.auth.tokens import Quota


class TokenBucket:
    """``quota.burst`` requests at once, ``quota.rate_per_s`` on average; full at ``now``."""

    __slots__ = ("_last", "_level", "quota")

    def __init__(self, quota: Quota, now: float) -> None:
        self.quota = quota
        self._level = float(quota.burst)
        self._last = now

    def take(self, now: float) -> bool:
        """Take one request's worth at ``now``; False (nothing taken) when the bucket is empty."""
        quota = self.quota
        level = self._level + (now - self._last) * quota.rate_per_s
        if level > quota.burst:
            level = quota.burst
        self._last = now
        if level >= 1.0:
            self._level = level - 1.0
            return True
        self._level = level
        return False

    def describe(self) -> str:
        """The quota in words, for the refusal's message."""
        return f"{self.quota.rate_per_s:g} requests/s, burst {self.quota.burst}"
