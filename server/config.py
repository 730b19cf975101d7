"""Frozen configuration: the server's and each model's.

Model configs come from Triton's ``config.pbtxt`` (parsed in ``server.model_config``); here they
are plain frozen dataclasses, normalized and then validated once at model load. Validation errors
name the model and the field. Optional features are ``None`` when off.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from server.errors import ModelLoadError
from server.types import DATATYPE_DTYPES, TensorSpec

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


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One model's configuration, complete after :func:`complete_model_config`."""

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


def complete_model_config(
    config: ModelConfig, io: ModelIO, *, max_batch_size_set: bool, default_max_batch_size: int
) -> ModelConfig:
    """Normalize: fill inputs/outputs (and the batch size) from the model file, then validate.

    A declared tensor must exist in the model with the same datatype and compatible dims.
    """
    name = config.name
    max_batch = config.max_batch_size
    batchable = all(t.dims and t.dims[0] == -1 for t in (*io.inputs, *io.outputs))
    if not max_batch_size_set and max_batch == 0 and batchable:
        max_batch = default_max_batch_size
    if max_batch > 0 and not batchable:
        fixed = [t.name for t in (*io.inputs, *io.outputs) if not t.dims or t.dims[0] != -1]
        raise ModelLoadError(
            f"model '{name}': max_batch_size {max_batch} needs a variable first dimension, "
            f"but tensor(s) {', '.join(repr(n) for n in fixed)} have a fixed one"
        )

    def merge(kind: str, declared: tuple[TensorSpec, ...], actual: tuple[TensorSpec, ...]):
        by_name = {t.name: t for t in actual}
        if not declared:
            return tuple(
                replace(t, dims=t.dims[1:] if max_batch > 0 else t.dims) for t in actual
            )
        for spec in declared:
            real = by_name.get(spec.name)
            if real is None:
                raise ModelLoadError(
                    f"model '{name}': {kind} '{spec.name}' is not in the model file "
                    f"(it has {sorted(by_name)})"
                )
            if real.datatype != spec.datatype:
                raise ModelLoadError(
                    f"model '{name}': {kind} '{spec.name}' is declared {spec.datatype} "
                    f"but the model file has {real.datatype}"
                )
            real_dims = real.dims[1:] if max_batch > 0 else real.dims
            want = spec.model_dims
            if len(real_dims) != len(want) or any(
                r != -1 and s != -1 and r != s for r, s in zip(real_dims, want, strict=True)
            ):
                raise ModelLoadError(
                    f"model '{name}': {kind} '{spec.name}' is declared with "
                    f"{'reshape' if spec.reshape is not None else 'dims'} "
                    f"{list(want)} but the model file has {list(real_dims)}"
                    + (" (batch dimension excluded)" if max_batch > 0 else "")
                )
        return declared

    inputs = merge("input", config.inputs, io.inputs)
    outputs = merge("output", config.outputs, io.outputs)
    if not config.inputs:
        missing = set()
    else:
        missing = {t.name for t in io.inputs if not t.optional} - {t.name for t in inputs}
    if missing:
        raise ModelLoadError(
            f"model '{name}': the model file needs input(s) {sorted(missing)} "
            "that config.pbtxt does not declare"
        )
    done = replace(config, max_batch_size=max_batch, inputs=inputs, outputs=outputs)
    validate_model_config(done)
    return done


def validate_model_config(config: ModelConfig) -> None:
    """Check a complete config; raise ModelLoadError naming the field."""
    name = config.name
    check_model_name(name)
    if config.max_batch_size < 0:
        raise ModelLoadError(f"model '{name}': max_batch_size must be >= 0")
    if not config.inputs:
        raise ModelLoadError(f"model '{name}': no inputs")
    if not config.outputs:
        raise ModelLoadError(f"model '{name}': no outputs")
    for kind, tensors in (("input", config.inputs), ("output", config.outputs)):
        seen: set[str] = set()
        for t in tensors:
            if t.name in seen:
                raise ModelLoadError(f"model '{name}': {kind} '{t.name}' is declared twice")
            seen.add(t.name)
            if t.datatype not in DATATYPE_DTYPES:
                raise ModelLoadError(
                    f"model '{name}': {kind} '{t.name}' has unsupported datatype {t.datatype}"
                )
            if any(d < -1 or d == 0 for d in t.dims):
                raise ModelLoadError(
                    f"model '{name}': {kind} '{t.name}' dims {list(t.dims)}: "
                    "each dim must be positive or -1"
                )
            fixed = t.reshape is not None and -1 not in (*t.dims, *t.reshape)
            if fixed and _prod(t.dims) != _prod(t.reshape or ()):
                raise ModelLoadError(
                    f"model '{name}': {kind} '{t.name}' reshape {list(t.reshape or ())} does "
                    f"not hold the {_prod(t.dims)} elements of dims {list(t.dims)}"
                )
    batching = config.dynamic_batching
    if batching is not None:
        for size in batching.preferred_batch_sizes:
            if not 0 < size <= max(config.max_batch_size, 1):
                raise ModelLoadError(
                    f"model '{name}': dynamic_batching.preferred_batch_size {size} must be in "
                    f"1..max_batch_size ({config.max_batch_size})"
                )
        if batching.max_queue_delay_us < 0:
            raise ModelLoadError(f"model '{name}': max_queue_delay_microseconds must be >= 0")
        _validate_priorities(name, batching)
    _validate_overload(name, config)
    for group in config.instance_groups:
        if group.count < 1:
            raise ModelLoadError(f"model '{name}': instance_group.count must be >= 1")
    policy = config.version_policy
    if policy.kind == "latest" and policy.num_versions < 1:
        raise ModelLoadError(f"model '{name}': version_policy.latest.num_versions must be >= 1")
    if policy.kind == "specific" and not policy.versions:
        raise ModelLoadError(f"model '{name}': version_policy.specific lists no versions")


def _validate_priorities(name: str, batching: DynamicBatching) -> None:
    levels = batching.priority_levels
    where = f"model '{name}': dynamic_batching"
    if levels < 0:
        raise ModelLoadError(f"{where}.priority_levels must be >= 0")
    if levels and not 1 <= batching.default_priority_level <= levels:
        raise ModelLoadError(
            f"{where}.default_priority_level {batching.default_priority_level} must be in "
            f"1..priority_levels ({levels})"
        )
    if not levels and batching.default_priority_level:
        raise ModelLoadError(f"{where}.default_priority_level needs priority_levels")
    for level in batching.priority_queue_policy:
        if not 1 <= level <= levels:
            raise ModelLoadError(
                f"{where}.priority_queue_policy key {level} must be in 1..priority_levels "
                f"({levels})"
            )
    policies = [("default_queue_policy", batching.default_queue_policy)] + [
        (f"priority_queue_policy[{k}]", v) for k, v in batching.priority_queue_policy.items()
    ]
    for label, policy in policies:
        if policy.max_queue_size is not None and policy.max_queue_size <= 0:
            raise ModelLoadError(f"{where}.{label}.max_queue_size must be > 0")


def _validate_overload(name: str, config: ModelConfig) -> None:
    policy = config.overload
    where = f"model '{name}': parameter"
    batching = config.dynamic_batching
    levels = max(1, batching.priority_levels if batching else 0)
    if policy.latency_budget_ms <= 0:
        raise ModelLoadError(f"{where} 'latency_budget_ms' must be > 0")
    fractions = policy.priority_budget_fractions
    if fractions and len(fractions) != levels:
        raise ModelLoadError(
            f"{where} 'priority_budget_fractions' needs one fraction per priority level "
            f"({levels}), got {len(fractions)}"
        )
    if any(not 0 < f <= 1 for f in fractions):
        raise ModelLoadError(f"{where} 'priority_budget_fractions': each must be in (0, 1]")
    for key in ("max_queue_rows", "max_queue_bytes"):
        value = getattr(policy, key)
        if value is not None and value <= 0:
            raise ModelLoadError(f"{where} '{key}' must be > 0")
    if policy.codel_target_ms is not None and policy.codel_target_ms <= 0:
        raise ModelLoadError(f"{where} 'codel_target_ms' must be > 0 (or 'off')")
    if policy.codel_interval_ms <= 0:
        raise ModelLoadError(f"{where} 'codel_interval_ms' must be > 0")
    if policy.fallback_model is not None:
        check_model_name(policy.fallback_model)
        if policy.fallback_model == name:
            raise ModelLoadError(f"{where} 'fallback_model' may not name the model itself")


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How one server process runs."""

    model_repository: Path
    host: str = "127.0.0.1"
    #: gRPC port; 0 picks a free one (the bound port is printed and on ``Server.port``).
    grpc_port: int = 8001
    #: Prometheus /metrics HTTP port; None disables it, 0 picks a free one.
    metrics_port: int | None = 8002
    #: "none": load the whole repository at start; "explicit": load only ``startup_models``
    #: and whatever RepositoryModelLoad asks for.
    model_control: str = "none"
    startup_models: tuple[str, ...] = ()
    #: Seconds to finish in-flight requests on shutdown.
    shutdown_grace_s: float = 10.0
    #: Width of the sliding window for p50/p95/p99.
    latency_window_s: float = 60.0
    #: Batch size a model gets when config.pbtxt does not set one and the model can batch.
    default_max_batch_size: int = 64
    #: Queue bound (in requests) for models whose config sets none.
    default_max_queue_size: int = 4096
    #: Largest gRPC message accepted or sent, in bytes.
    max_message_bytes: int = 256 * 1024 * 1024
    #: Bound on the input bytes of admitted requests not yet answered, all models together;
    #: None: no server-wide bound (each queue still has its own).
    max_inflight_bytes: int | None = 1024 * 1024 * 1024
    #: Most input tensors one request may carry (more: RESOURCE_EXHAUSTED).
    max_request_inputs: int = 64
    #: Most requested outputs one request may name (more: RESOURCE_EXHAUSTED).
    max_request_outputs: int = 64
    #: Most dimensions one input tensor may have (more: RESOURCE_EXHAUSTED).
    max_tensor_rank: int = 16
    log_level: str = "INFO"
    #: Bind gRPC with SO_REUSEPORT so sibling worker processes share the port (``--workers``).
    reuse_port: bool = False
    #: Address for /metrics; None uses ``host`` (workers use loopback: the supervisor scrapes).
    metrics_host: str | None = None
    #: This process's slot under ``sluice serve --workers N`` (0..N-1); None when standalone.
    worker_id: int | None = None

    @property
    def request_limits(self) -> RequestLimits:
        """The per-request size caps checked before a request is decoded."""
        return RequestLimits(
            self.max_request_inputs, self.max_request_outputs, self.max_tensor_rank
        )


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Size caps of one request; a request over one is refused with RESOURCE_EXHAUSTED."""

    #: Most input tensors.
    max_inputs: int = 64
    #: Most requested outputs.
    max_outputs: int = 64
    #: Most dimensions of one input tensor.
    max_rank: int = 16
