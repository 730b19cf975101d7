"""Frozen model configuration: what each model is and how it is served.

Model configs come from Triton's ``config.pbtxt`` (parsed in ``sluice.server.config.pbtxt``); here
they are plain frozen dataclasses, normalized and then validated once at model load. Validation
errors name the model and the field. Optional features are ``None`` when off.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sluice.server.config.sequence import SequenceBatching
from sluice.server.errors import ModelLoadError
from sluice.server.types import TensorSpec

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a safe model name (no path separators, no '..'), else raise."""
    if not _MODEL_NAME.match(name) or ".." in name:
        raise ModelLoadError(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.'; "
            "no path separators and no '..'"
        )
    return name


class InstanceKind(enum.Enum):
    """Where a model instance runs (Triton's instance_group.kind)."""

    AUTO = "KIND_AUTO"
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """``count`` copies of the model on ``kind``; each instance has its own executor thread."""

    count: int = 1
    kind: InstanceKind = InstanceKind.AUTO
    #: GPU ordinals for KIND_GPU; empty means device 0.
    gpus: tuple[int, ...] = ()


class TimeoutAction(enum.Enum):
    """What happens to a request whose queue timeout passes (Triton's timeout_action)."""

    #: Fail it with DEADLINE_EXCEEDED (it is never computed).
    REJECT = "REJECT"
    #: Move it behind the requests of its priority level that have not timed out; it is still
    #: computed unless its gRPC deadline passes or its caller leaves.
    DELAY = "DELAY"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy: the queue rules of one priority level."""

    #: Bound on queued requests at the level; None uses the server default (every queue has one).
    max_queue_size: int | None = None
    #: Time a request may wait in the queue; None means no limit.
    default_timeout_us: int | None = None
    #: Whether a request's own ``timeout`` parameter may shorten the default timeout.
    allow_timeout_override: bool = True
    #: What happens when the queue timeout passes.
    timeout_action: TimeoutAction = TimeoutAction.REJECT


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    """Triton's dynamic_batching block."""

    #: Batch sizes (in rows) the scheduler prefers to form; empty means "as large as possible".
    preferred_batch_sizes: tuple[int, ...] = ()
    #: How long a request may wait for a preferred (or full) batch to form; 0 dispatches at once.
    max_queue_delay_us: int = 0
    #: Queue rules of every level without its own entry in ``priority_queue_policy``.
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    #: Number of priority levels (1 = highest); 0 means one level for every request.
    priority_levels: int = 0
    #: Level of requests that give no priority (or one out of range); 0 when levels are off.
    default_priority_level: int = 0
    #: Per-level queue rules replacing ``default_queue_policy`` for that level.
    priority_queue_policy: Mapping[int, QueuePolicy] = field(default_factory=dict)

    @property
    def max_queue_size(self) -> int | None:
        """The default policy's queue bound (requests)."""
        return self.default_queue_policy.max_queue_size

    @property
    def default_timeout_us(self) -> int | None:
        """The default policy's queue timeout (microseconds)."""
        return self.default_queue_policy.default_timeout_us

    @property
    def allow_timeout_override(self) -> bool:
        """Whether the default policy lets a request's ``timeout`` shorten its timeout."""
        return self.default_queue_policy.allow_timeout_override

    def policy(self, level: int) -> QueuePolicy:
        """The queue rules of priority ``level``."""
        return self.priority_queue_policy.get(level, self.default_queue_policy)


@dataclass(frozen=True, slots=True)
class OverloadPolicy:
    """Sluice's own overload settings of one model (config.pbtxt ``parameters``)."""

    #: Latency budget for priority decisions when a request brings no deadline.
    latency_budget_ms: float = 1000.0
    #: Share of the budget each level may use, level 1 first; empty: level L of N gets (N-L+1)/N.
    priority_budget_fractions: tuple[float, ...] = ()
    #: Bound on queued rows (all levels); None: only the request-count bound applies.
    max_queue_rows: int | None = None
    #: Bound on queued input bytes (all levels); None: only the server's in-flight bound applies.
    max_queue_bytes: int | None = None
    #: CoDel target: shed when the queueing delay stays above it for an interval; None: off.
    codel_target_ms: float | None = None
    #: CoDel interval: how long the delay must stay above target before shedding starts.
    codel_interval_ms: float = 100.0
    #: Model that answers this model's overload traffic (degraded mode); None: shed instead.
    fallback_model: str | None = None


#: config.pbtxt ``parameters`` that configure :class:`OverloadPolicy` (not passed to backends).
OVERLOAD_PARAMETERS = frozenset({
    "latency_budget_ms", "priority_budget_fractions", "max_queue_rows", "max_queue_bytes",
    "codel_target_ms", "codel_interval_ms", "fallback_model",
})


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions in the model directory to serve (Triton's version_policy)."""

    #: "latest", "all" or "specific".
    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of ``available`` (sorted ascending)."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :]


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step of a pipeline (Triton's ensemble_scheduling.step)."""

    model_name: str
    #: -1 means the newest ready version.
    model_version: int
    #: step model input name -> pipeline tensor name.
    input_map: Mapping[str, str]
    #: step model output name -> pipeline tensor name.
    output_map: Mapping[str, str]


# string models & warm-up (issue 16 item 1)
@dataclass(frozen=True, slots=True)
class WarmupInput:
    """How one input of a warm-up sample is filled (Triton's ModelWarmup.Input)."""

    datatype: str
    #: Shape without the batch dimension (the sample's batch_size adds it when the model batches).
    dims: tuple[int, ...]
    #: "zero", "random" or "file".
    source: str
    #: For "file": a file in the model's ``warmup`` directory holding the raw tensor (BYTES
    #: elements each a 4-byte little-endian length, then the bytes).
    data_file: str | None = None


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One warm-up request the config asks for (Triton's ModelWarmup): run ``count`` times on
    every instance before the version serves; its failure fails the load."""

    name: str
    #: Rows of the request (1 for a model that does not batch).
    batch_size: int
    inputs: Mapping[str, WarmupInput]
    count: int = 1


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One model's configuration; complete after ``config_validation.complete_model_config``."""

    name: str
    #: Backend name: "onnxruntime" (platform "onnxruntime_onnx" maps here).
    backend: str = "onnxruntime"
    platform: str = ""
    #: Largest batch in rows; 0 means the model does not batch (shapes are taken as they are).
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    #: None: dynamic batching off (each request runs alone).
    dynamic_batching: DynamicBatching | None = None
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    parameters: Mapping[str, str] = field(default_factory=dict)
    default_model_filename: str = "model.onnx"
    #: GPU accelerators asked for in optimization.execution_accelerators (e.g. "tensorrt").
    gpu_accelerators: tuple[str, ...] = ()
    #: Pipeline steps, for platform "ensemble".
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    #: Admission limits, priority budgets, standing-queue rule and fallback model.
    overload: OverloadPolicy = field(default_factory=OverloadPolicy)
    #: Stateful sequences (issue 16 item 5); None: requests are independent.
    sequence_batching: SequenceBatching | None = None
    #: Warm-up requests the config declares (model_warmup); empty: the backend's default
    #: warm-up, whose failure is only a warning.
    warmup: tuple[WarmupSample, ...] = ()

    @property
    def instance_count(self) -> int:
        return sum(g.count for g in self.instance_groups)

    @property
    def wants_gpu(self) -> bool:
        return any(g.kind is InstanceKind.GPU for g in self.instance_groups)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


@dataclass(frozen=True, slots=True)
class ModelIO:
    """What a model file itself declares (full shapes; None or -1 for dynamic dims)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: (backend, platform) of the runtime that really serves the file when the file, not the
    #: config, decides it (an MLflow model: its flavor); None: the config's.
    runtime: tuple[str, str] | None = None
