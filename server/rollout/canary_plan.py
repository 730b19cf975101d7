"""A canary's plan and gates: the record kept in the deployment state, and the pure checks.

No tasks and no I/O here: :mod:`sluice.server.rollout.canary` drives canaries with these.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sluice.server.errors import Code, InvalidInput, SluiceError
from sluice.server.rollout.arm_stats import EpochStats
from sluice.server.rollout.deployment import DeploymentState, Route

RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled_back", "aborted"
#: The identity the controller's own changes carry in the audit log.
CANARY_CALLER = "sluice-canary"
DEFAULT_STEPS: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)


class CanaryConflict(SluiceError):
    """The change conflicts with a running canary (abort it first)."""

    code = Code.FAILED_PRECONDITION


@dataclass(frozen=True, slots=True)
class CanaryGates:
    """What a step must show before the candidate gets more traffic."""

    #: Highest candidate error rate over a step (0.01 = 1 %).
    max_error_rate: float = 0.01
    #: Highest candidate p99 / stable p99 over a step; None: not checked.
    max_p99_ratio: float | None = 1.5
    #: Lowest shadow agreement rate; None: not checked (also skipped without a shadow report).
    min_agreement: float | None = None
    #: Candidate requests a step needs before it is judged.
    min_requests: int = 20
    # -- feedback + quality: judged on the live quality windows (labels joined by request id)
    #: Lowest candidate accuracy over its labelled rows; None: not checked.
    min_accuracy: float | None = None
    #: Highest stable accuracy minus candidate accuracy; None: not checked.
    max_accuracy_drop: float | None = None
    #: Labelled rows each arm needs before the accuracy gates judge (the step is extended).
    min_labels: int = 20

    @property
    def wants_accuracy(self) -> bool:
        return self.min_accuracy is not None or self.max_accuracy_drop is not None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise InvalidInput(f"gate max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.max_p99_ratio is not None and not self.max_p99_ratio > 0:
            raise InvalidInput(f"gate max_p99_ratio must be > 0, got {self.max_p99_ratio}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidInput(f"gate min_agreement must be in [0, 1], got {self.min_agreement}")
        if self.min_requests < 1:
            raise InvalidInput(f"gate min_requests must be >= 1, got {self.min_requests}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise InvalidInput(f"gate min_accuracy must be in [0, 1], got {self.min_accuracy}")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise InvalidInput(
                f"gate max_accuracy_drop must be in [0, 1], got {self.max_accuracy_drop}")
        if self.min_labels < 1:
            raise InvalidInput(f"gate min_labels must be >= 1, got {self.min_labels}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CanaryGates:
        """Gates from a JSON object; missing keys take the defaults, unknown keys are refused."""
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InvalidInput(f"unknown canary gate(s) {unknown}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInput(f"bad canary gates: {exc}") from None


def check_plan(steps: Iterable[float], interval_s: float) -> tuple[float, ...]:
    """Validated steps (percent, increasing, in (0, 100]); raises InvalidInput naming the field."""
    plan = tuple(float(p) for p in steps) or DEFAULT_STEPS
    if any(not 0.0 < p <= 100.0 for p in plan):
        raise InvalidInput(f"canary steps must be percentages in (0, 100], got {list(plan)}")
    if any(b <= a for a, b in zip(plan, plan[1:], strict=False)):
        raise InvalidInput(f"canary steps must increase, got {list(plan)}")
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise InvalidInput(f"canary interval_s must be > 0 seconds, got {interval_s}")
    return plan


def new_record(
    stable: int, candidate: int, steps: tuple[float, ...], interval_s: float,
    gates: CanaryGates, *, caller: str,
) -> dict[str, Any]:
    """The JSON record kept in ``DeploymentState.canary`` while (and after) a canary runs."""
    return {
        "id": uuid.uuid4().hex[:12],
        "state": RUNNING,
        "stable": stable,
        "candidate": candidate,
        "steps": list(steps),
        "step": 0,
        "interval_s": interval_s,
        "gates": gates.to_json(),
        "started_by": caller,
        "reason": "",
    }


def routes_for(stable: int, candidate: int, percent: float) -> tuple[Route, ...]:
    """Arms ``stable`` and ``candidate`` splitting traffic ``100 - percent`` / ``percent``."""
    if percent >= 100.0:
        return (Route("candidate", candidate, 100.0),)
    return (Route("stable", stable, 100.0 - percent), Route("candidate", candidate, percent))


def is_running(state: DeploymentState) -> bool:
    return bool(state.canary) and state.canary.get("state") == RUNNING  # type: ignore[union-attr]


def error_gate(candidate: EpochStats, gates: CanaryGates) -> str:
    """Why the candidate's error rate over a step breaches the gate ("" when it does not)."""
    if candidate.requests and candidate.error_rate > gates.max_error_rate:
        return (f"gate error_rate: candidate {candidate.error_rate:.2f} > "
                f"{gates.max_error_rate:g} over {candidate.requests} requests")
    return ""


#: (accuracy or None, labelled rows) of an arm's live quality window: what the accuracy gates
#: read (``QualityMonitor.accuracy``, handed in by the composition root).
Accuracy = tuple[float | None, int]


def accuracy_pending(candidate: Accuracy, stable: Accuracy, gates: CanaryGates) -> str:
    """Why the accuracy gates cannot judge yet ("" when they can, or are off)."""
    if not gates.wants_accuracy:
        return ""
    if candidate[1] < gates.min_labels:
        return f"candidate {candidate[1]} < {gates.min_labels} labelled rows"
    if gates.max_accuracy_drop is not None and stable[1] < gates.min_labels:
        return f"stable {stable[1]} < {gates.min_labels} labelled rows"
    return ""


def accuracy_gate(candidate: Accuracy, stable: Accuracy, gates: CanaryGates) -> str:
    """Why the candidate's accuracy breaches a gate ("" when it does not, or cannot be judged)."""
    if accuracy_pending(candidate, stable, gates) or candidate[0] is None:
        return ""
    if gates.min_accuracy is not None and candidate[0] < gates.min_accuracy:
        return (f"gate min_accuracy: candidate accuracy {candidate[0]:.4f} < "
                f"{gates.min_accuracy:g} over {candidate[1]} labelled rows")
    if gates.max_accuracy_drop is not None and stable[0] is not None:
        drop = stable[0] - candidate[0]
        if drop > gates.max_accuracy_drop:
            return (f"gate accuracy_drop: stable {stable[0]:.4f} - candidate "
                    f"{candidate[0]:.4f} = {drop:.4f} > {gates.max_accuracy_drop:g} "
                    f"over {stable[1]} / {candidate[1]} labelled rows")
    return ""
