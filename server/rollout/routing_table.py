"""Weighted routing over a model's arms: rendezvous hashing for sticky keys, a weighted random
pick for the rest, precomputed per deployment state.

**Weighted rendezvous hashing.** For a key k and arm i (version v_i, weight w_i),
u_i = (h + 0.5) / 2**64 with h the 8-byte digest (big-endian) of
``blake2b(f"{v_i}\\0".encode() + k.encode("utf-8"), digest_size=8)``; the key goes to the arm
with the highest ``w_i / -ln(u_i)``. E_i = -ln(u_i) is an Exp(1) draw fixed by (k, v_i), so:

- a key lands on arm i with probability w_i / sum(w) (an exponential race);
- the same key always gets the same arm while weights are unchanged, in every process and
  across restarts (nothing but the key, the versions and the weights enters the choice);
- a key moves from arm a to arm b only if b's weight grew relative to a's: a wins iff
  E_a/w_a < E_b/w_b for every other b, and that order flips only when w_b/w_a rises. So
  90/10 -> 80/20 moves exactly the keys that must move (about 10%, all from the first arm to the
  second); adding an arm takes keys only onto it; removing one moves only its own keys; scaling
  every weight by the same factor moves nothing.

Arms are identified by version, not label, so renaming an alias moves no key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from sluice.server.rollout.deployment import DeploymentState

_INV_2_64 = 1.0 / 2.0**64


def _unit(prefix: bytes, key: bytes) -> float:
    """A uniform in (0, 1), fixed by (prefix, key)."""
    digest = hashlib.blake2b(prefix + key, digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) * _INV_2_64


def rendezvous_pick(key: str, versions: tuple[int, ...], weights: tuple[float, ...]) -> int:
    """Index of the arm ``key`` sticks to (weighted rendezvous hashing; see the module doc)."""
    data = key.encode("utf-8")
    return _rendezvous(data, tuple(f"{v}\0".encode() for v in versions), weights)


def _rendezvous(key: bytes, prefixes: tuple[bytes, ...], weights: tuple[float, ...]) -> int:
    best, best_score = 0, -1.0
    for i, prefix in enumerate(prefixes):
        score = weights[i] / -math.log(_unit(prefix, key))
        if score > best_score:
            best, best_score = i, score
    return best


class RoutingTable:
    """One model's deployment state, precomputed so that resolving costs a few dict lookups.
    Immutable once built: a change builds a new table and swaps it in."""

    __slots__ = ("aliases", "arms", "cumulative", "prefixes", "shadows", "state", "total",
                 "versions", "weights")

    def __init__(self, state: DeploymentState) -> None:
        self.state = state
        self.aliases = {alias: str(version) for alias, version in state.aliases}
        self.arms = tuple(r.arm for r in state.routes)
        self.versions = tuple(str(r.version) for r in state.routes)
        self.weights = tuple(r.weight for r in state.routes)
        self.prefixes = tuple(f"{r.version}\0".encode() for r in state.routes)
        running, cumulative = 0.0, []
        for weight in self.weights:
            running += weight
            cumulative.append(running)
        self.cumulative = tuple(cumulative)
        self.total = running
        self.shadows = state.shadows

    def pick(self, key: str | None, uniform: Callable[[], float]) -> int:
        """Index of the route for a request: sticky by ``key``, else weighted by ``uniform()``
        (a float in [0, 1))."""
        if len(self.arms) == 1:
            return 0
        if key is not None:
            return _rendezvous(key.encode("utf-8"), self.prefixes, self.weights)
        point = uniform() * self.total
        for i, edge in enumerate(self.cumulative):
            if point < edge:
                return i
        return len(self.cumulative) - 1  # rounding at the top edge
