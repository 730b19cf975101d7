"""What a canary's gates are judged on: the evidence of one step, from one source.

The canary driver (:mod:`sluice.server.rollout.canary`) asks its :class:`GateEvidence` two
things: :meth:`~GateEvidence.start_step` when a step begins, and :meth:`~GateEvidence.read`
every ``check_every_s`` within it. Three sources answer the same interface:

- :class:`LocalEvidence` (this module): the process's own arm counters, shadow reports and live
  quality windows (a server with neither ``--state-store`` nor ``--metrics-source``);
- ``sluice.server.fleet.fleet_counters.FleetEvidence``: every live replica's counters summed
  through etcd (the default with ``--state-store etcd://``);
- ``sluice.server.fleet.prom_gates.PrometheusEvidence``: PromQL over every replica's /metrics
  (``--metrics-source prometheus://``).

Promise of every source: when its numbers cannot be read (etcd or Prometheus unreachable, an
answer that does not parse), :attr:`StepEvidence.pending` says why and the driver judges
nothing: the step waits. A canary is never promoted, nor rolled back, on missing data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sluice.server.rollout.arm_stats import EpochStats
from sluice.server.rollout.canary_plan import Accuracy

if TYPE_CHECKING:
    from sluice.server.rollout.router import Router
    from sluice.server.rollout.shadow import ShadowMirror

#: An arm that took no request in the step.
EMPTY = EpochStats(0, 0, 0.0, None, None, 0.0)


@dataclass(frozen=True, slots=True)
class Agreement:
    """Shadow agreement of the candidate against one live version: rate over ``compared``."""

    agreement: float
    compared: int


@dataclass(frozen=True, slots=True)
class StepEvidence:
    """What the gates read at one check of a step."""

    #: The candidate's and the stable version's numbers since the step started.
    candidate: EpochStats = EMPTY
    stable: EpochStats = EMPTY
    #: Shadow agreement of the candidate, one per live version it was compared with.
    agreements: tuple[Agreement, ...] = ()
    #: (candidate, stable) live accuracy windows; (None, 0) each without live quality.
    accuracies: tuple[Accuracy, Accuracy] = ((None, 0), (None, 0))
    #: Why nothing can be judged now ("" when the numbers above are the source's answer).
    pending: str = ""
    #: Where the numbers come from, for the record ("this replica", "3 replicas via etcd").
    source: str = field(default="", compare=False)


class GateEvidence(Protocol):
    """A source of step evidence (see the module docstring)."""

    async def start_step(self, name: str, record: Mapping[str, Any]) -> None:
        """A step of ``name``'s canary ``record`` starts now: count from here."""

    async def read(self, name: str, record: Mapping[str, Any]) -> StepEvidence:
        """The step's numbers so far; ``pending`` set when they cannot be read."""

    async def close(self) -> None:
        """Release what the source holds (connections); called once, when the driver closes."""


class LocalEvidence:
    """This process's own numbers: the router's per-arm epochs, the mirror's shadow reports
    and the live quality windows (``quality(model, arm, version)``; None: not running)."""

    def __init__(self, router: Router, shadow: ShadowMirror | None = None,
                 quality: Callable[[str, str, int], Accuracy] | None = None) -> None:
        self._router = router
        self._shadow = shadow
        self.quality = quality

    async def start_step(self, name: str, record: Mapping[str, Any]) -> None:
        for stats in self._router.arm_stats(name).values():
            stats.start_epoch()

    async def read(self, name: str, record: Mapping[str, Any]) -> StepEvidence:
        arms = self._router.arm_stats(name)
        candidate = arms.get(("candidate", int(record["candidate"])))
        stable = arms.get(("stable", int(record["stable"])))
        return StepEvidence(
            candidate.epoch() if candidate is not None else EMPTY,
            stable.epoch() if stable is not None else EMPTY,
            self.agreements(name, int(record["candidate"])),
            # live quality answers from its worker process: not on the event loop
            await asyncio.to_thread(self.accuracies, name, record), source="this replica")

    async def close(self) -> None:
        return None

    def agreements(self, name: str, candidate: int) -> tuple[Agreement, ...]:
        """The mirror's agreement of ``candidate`` per live version (compared pairs only)."""
        shadow = self._shadow or getattr(self._router, "shadow", None)
        if shadow is None:
            return ()
        return tuple(Agreement(r.agreement, r.compared) for r in shadow.report(name)
                     if r.shadow_version == candidate and r.compared
                     and r.agreement is not None)

    def accuracies(self, name: str, record: Mapping[str, Any]) -> tuple[Accuracy, Accuracy]:
        if self.quality is None:
            return (None, 0), (None, 0)
        return (self.quality(name, "candidate", int(record["candidate"])),
                self.quality(name, "stable", int(record["stable"])))
