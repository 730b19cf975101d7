"""Triton's ``config.pbtxt`` <-> :class:`sluice.server.config.model.ModelConfig`.

Parsing is strict: a field Sluice does not implement is a load error naming the field, never
silently ignored, so a Triton repository either behaves as written or says why not.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import Message

from sluice.proto import model_config_pb2 as mc
from sluice.server.config import sequence_pbtxt as sequence_config
from sluice.server.config import triton_fields  # Triton parity (issue 16)
from sluice.server.config.model import (
    OVERLOAD_PARAMETERS,
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    InstanceKind,
    ModelConfig,
    QueuePolicy,
    TimeoutAction,
    VersionPolicy,
    check_model_name,
)
from sluice.server.config.overload_params import overload_parameters, overload_policy
from sluice.server.errors import ModelLoadError
from sluice.server.types import TensorSpec

#: Field paths (repeated and map fields by their name) that Sluice implements.
SUPPORTED_FIELDS = frozenset({
    "name", "platform", "backend", "max_batch_size", "default_model_filename",
    "input", "input.name", "input.data_type", "input.dims", "input.optional",
    "input.reshape", "input.reshape.shape",
    "output", "output.name", "output.data_type", "output.dims",
    "output.reshape", "output.reshape.shape",
    "version_policy", "version_policy.latest", "version_policy.latest.num_versions",
    "version_policy.all", "version_policy.specific", "version_policy.specific.versions",
    "dynamic_batching", "dynamic_batching.preferred_batch_size",
    "dynamic_batching.max_queue_delay_microseconds", "dynamic_batching.preserve_ordering",
    "dynamic_batching.default_queue_policy",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "dynamic_batching.default_queue_policy.allow_timeout_override",
    "dynamic_batching.default_queue_policy.timeout_action",
    "dynamic_batching.priority_levels", "dynamic_batching.default_priority_level",
    "dynamic_batching.priority_queue_policy", "dynamic_batching.priority_queue_policy.key",
    "dynamic_batching.priority_queue_policy.value",
    "dynamic_batching.priority_queue_policy.value.max_queue_size",
    "dynamic_batching.priority_queue_policy.value.default_timeout_microseconds",
    "dynamic_batching.priority_queue_policy.value.allow_timeout_override",
    "dynamic_batching.priority_queue_policy.value.timeout_action",
    "instance_group", "instance_group.name", "instance_group.count", "instance_group.kind",
    "instance_group.gpus",
    "parameters", "parameters.key", "parameters.value", "parameters.value.string_value",
    "optimization", "optimization.execution_accelerators",
    "optimization.execution_accelerators.gpu_execution_accelerator",
    "optimization.execution_accelerators.gpu_execution_accelerator.name",
    "ensemble_scheduling", "ensemble_scheduling.step", "ensemble_scheduling.step.model_name",
    "ensemble_scheduling.step.model_version", "ensemble_scheduling.step.input_map",
    "ensemble_scheduling.step.input_map.key", "ensemble_scheduling.step.input_map.value",
    "ensemble_scheduling.step.output_map", "ensemble_scheduling.step.output_map.key",
    "ensemble_scheduling.step.output_map.value",
}) | sequence_config.SEQUENCE_FIELDS | triton_fields.FIELDS  # issue 16: sequences, Triton fields

_PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "ensemble": "ensemble"}
#: Backends Sluice implements: "fil" is Triton's FIL backend name, served by our Numba kernels.
BACKENDS = ("onnxruntime", "numba", "fil", "ensemble")
_MAX_BATCH_SET = re.compile(r"^\s*max_batch_size\s*:", re.MULTILINE)


def set_fields(message: Message, prefix: str = "") -> list[str]:
    """Every field path that is set in ``message``, recursively."""
    paths = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        paths.append(path)
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:  # map<string, Message>: walk the values
            paths += [f"{path}.key", f"{path}.value"]
            items = [v for v in value.values() if isinstance(v, Message)]
            path += ".value"
        else:
            items = [value] if isinstance(value, Message) else list(value)
        for item in items:
            paths.extend(set_fields(item, path + "."))
    return paths


def datatype_name(proto_type: int) -> str:
    """TYPE_FP32 -> "FP32", TYPE_STRING -> "BYTES"."""
    name = mc.DataType.Name(proto_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def proto_datatype(datatype: str) -> int:
    """"FP32" -> TYPE_FP32, "BYTES" -> TYPE_STRING."""
    return mc.DataType.Value("TYPE_" + ("STRING" if datatype == "BYTES" else datatype))


def parse_model_config(text: str, *, source: str) -> mc.ModelConfig:
    """Parse config.pbtxt text; errors name ``source`` and the line."""
    message = mc.ModelConfig()
    try:
        with warnings.catch_warnings():
            # protobuf only warns (for now) on an invalid escape such as "\i" in a string:
            # a config that a later protobuf will refuse is refused today
            warnings.simplefilter("error", DeprecationWarning)
            text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{source}: {exc}") from None
    except DeprecationWarning as exc:
        raise ModelLoadError(f"{source}: not valid protobuf text: {exc}") from None
    except ValueError as exc:  # protobuf's own check on setting a value (an enum out of range)
        raise ModelLoadError(f"{source}: not valid protobuf text: {exc}") from None
    unsupported = sorted({p for p in set_fields(message) if p not in SUPPORTED_FIELDS})
    if unsupported:
        raise ModelLoadError(
            f"{source}: field(s) not supported by Sluice: {', '.join(unsupported)}"
        )
    return message


def read_model_config(model_dir: Path, name: str) -> tuple[ModelConfig, bool]:
    """Read ``model_dir/config.pbtxt`` (it may be absent or partial).

    Returns the config (inputs/outputs may still be empty: the backend fills them from the
    model file) and whether ``max_batch_size`` was written explicitly.
    """
    check_model_name(name)
    path = model_dir / "config.pbtxt"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    message = parse_model_config(text, source=f"model '{name}' config.pbtxt")
    if message.name and message.name != name:
        raise ModelLoadError(
            f"model '{name}' config.pbtxt: name '{message.name}' differs from its directory"
        )
    return from_proto(message, name), bool(_MAX_BATCH_SET.search(text))


def from_proto(message: mc.ModelConfig, name: str) -> ModelConfig:
    """Translate a parsed (already field-checked) proto config into a ModelConfig."""
    where = f"model '{name}' config.pbtxt"
    backend = message.backend or _PLATFORM_BACKENDS.get(message.platform, "")
    if message.platform and message.platform not in _PLATFORM_BACKENDS:
        raise ModelLoadError(f"{where}: platform '{message.platform}' is not supported")
    if not backend:
        backend = "onnxruntime"
    if backend not in BACKENDS:
        raise ModelLoadError(
            f"{where}: backend '{backend}' is not supported (one of {', '.join(BACKENDS)})"
        )
    if (backend == "ensemble") != message.HasField("ensemble_scheduling"):
        raise ModelLoadError(
            f"{where}: platform 'ensemble' and ensemble_scheduling go together"
        )

    def tensors(items, kind: str) -> tuple[TensorSpec, ...]:
        out = []
        for t in items:
            if not t.name:
                raise ModelLoadError(f"{where}: an {kind} has no name")
            if t.data_type == mc.TYPE_INVALID:
                raise ModelLoadError(f"{where}: {kind} '{t.name}' has no data_type")
            out.append(TensorSpec(
                name=t.name,
                datatype=datatype_name(t.data_type),
                dims=tuple(t.dims),
                optional=getattr(t, "optional", False),
                reshape=tuple(t.reshape.shape) if t.HasField("reshape") else None,
                **({"format": triton_fields.input_format(t)} if kind == "input" else
                   {"label_filename": triton_fields.label_file(t, where)}),
            ))
        return tuple(out)

    policy = VersionPolicy()
    which = message.version_policy.WhichOneof("policy_choice")
    if which == "all":
        policy = VersionPolicy(kind="all")
    elif which == "specific":
        policy = VersionPolicy(
            kind="specific", versions=tuple(message.version_policy.specific.versions)
        )
    elif which == "latest":
        policy = VersionPolicy(num_versions=message.version_policy.latest.num_versions)

    batching = None
    if backend == "ensemble" and message.max_batch_size > 0:
        batching = DynamicBatching()  # a pipeline is batched once, at its entry
    if message.HasField("dynamic_batching"):
        db = message.dynamic_batching
        batching = DynamicBatching(
            preferred_batch_sizes=tuple(db.preferred_batch_size),
            max_queue_delay_us=db.max_queue_delay_microseconds,
            default_queue_policy=_queue_policy(
                db.default_queue_policy, db.HasField("default_queue_policy")
            ),
            priority_levels=db.priority_levels,
            default_priority_level=db.default_priority_level,
            priority_queue_policy={
                int(level): _queue_policy(policy, True)
                for level, policy in sorted(db.priority_queue_policy.items())
            },
        )

    kinds = {k.value: k for k in InstanceKind}
    groups = []
    for g in message.instance_group:
        kind_name = mc.ModelInstanceGroup.Kind.Name(g.kind)
        if kind_name not in kinds:
            raise ModelLoadError(f"{where}: instance_group.kind {kind_name} is not supported")
        groups.append(InstanceGroup(count=g.count or 1, kind=kinds[kind_name], gpus=tuple(g.gpus)))

    _check_file_name(message.default_model_filename, where)  # hardened input
    return ModelConfig(
        name=name,
        backend=backend,
        platform=message.platform or ("onnxruntime_onnx" if backend == "onnxruntime" else ""),
        max_batch_size=message.max_batch_size,
        inputs=tensors(message.input, "input"),
        outputs=tensors(message.output, "output"),
        version_policy=policy,
        dynamic_batching=batching,
        instance_groups=tuple(groups) or (InstanceGroup(),),
        parameters={
            k: v.string_value for k, v in message.parameters.items()
            if k not in OVERLOAD_PARAMETERS
        },
        default_model_filename=message.default_model_filename or "model.onnx",
        gpu_accelerators=tuple(
            a.name for a in message.optimization.execution_accelerators.gpu_execution_accelerator
        ),
        ensemble_steps=tuple(
            EnsembleStep(
                model_name=step.model_name,
                model_version=step.model_version,
                input_map=dict(step.input_map),
                output_map=dict(step.output_map),
            )
            for step in message.ensemble_scheduling.step
        ),
        overload=overload_policy(
            {k: v.string_value for k, v in message.parameters.items()
             if k in OVERLOAD_PARAMETERS},
            where,
        ),
        sequence_batching=sequence_config.parse_sequence_batching(message.sequence_batching, where)
        if message.HasField("sequence_batching") else None,
        warmup=triton_fields.warmup_from_proto(message.model_warmup, where, datatype_name),
    )


def _queue_policy(qp: mc.ModelQueuePolicy, present: bool) -> QueuePolicy:
    """Triton's ModelQueuePolicy; an absent default policy lets requests override timeouts."""
    return QueuePolicy(
        max_queue_size=qp.max_queue_size or None,
        default_timeout_us=qp.default_timeout_microseconds or None,
        allow_timeout_override=qp.allow_timeout_override if present else True,
        timeout_action=TimeoutAction.DELAY
        if qp.timeout_action == mc.ModelQueuePolicy.DELAY else TimeoutAction.REJECT,
    )


def _write_queue_policy(target: mc.ModelQueuePolicy, policy: QueuePolicy) -> None:
    target.SetInParent()
    target.max_queue_size = policy.max_queue_size or 0
    target.default_timeout_microseconds = policy.default_timeout_us or 0
    target.allow_timeout_override = policy.allow_timeout_override
    target.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(policy.timeout_action.value)


def to_proto(config: ModelConfig) -> mc.ModelConfig:
    """The complete config as Triton's ModelConfig message (what perf_analyzer reads)."""
    message = mc.ModelConfig(
        name=config.name,
        platform=config.platform,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        default_model_filename=config.default_model_filename,
    )
    for spec in config.inputs:
        t = message.input.add(name=spec.name, data_type=proto_datatype(spec.datatype))
        t.dims.extend(spec.dims)
        t.optional = spec.optional
        if spec.reshape is not None:
            t.reshape.shape.extend(spec.reshape)
    for spec in config.outputs:
        t = message.output.add(name=spec.name, data_type=proto_datatype(spec.datatype))
        t.dims.extend(spec.dims)
        if spec.reshape is not None:
            t.reshape.shape.extend(spec.reshape)
    policy = config.version_policy
    if policy.kind == "all":
        message.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        message.version_policy.specific.versions.extend(policy.versions)
    else:
        message.version_policy.latest.num_versions = policy.num_versions
    if config.dynamic_batching is not None:
        db = config.dynamic_batching
        message.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_sizes)
        message.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_us
        if db.default_queue_policy != QueuePolicy():
            _write_queue_policy(
                message.dynamic_batching.default_queue_policy, db.default_queue_policy
            )
        message.dynamic_batching.priority_levels = db.priority_levels
        message.dynamic_batching.default_priority_level = db.default_priority_level
        for level, rules in db.priority_queue_policy.items():
            _write_queue_policy(message.dynamic_batching.priority_queue_policy[level], rules)
    for group in config.instance_groups:
        g = message.instance_group.add(count=group.count)
        g.kind = mc.ModelInstanceGroup.Kind.Value(group.kind.value)
        g.gpus.extend(group.gpus)
    for key, value in {**config.parameters, **overload_parameters(config.overload)}.items():
        message.parameters[key].string_value = value
    accelerators = message.optimization.execution_accelerators.gpu_execution_accelerator
    for name in config.gpu_accelerators:
        accelerators.add(name=name)
    for step in config.ensemble_steps:
        entry = message.ensemble_scheduling.step.add(
            model_name=step.model_name, model_version=step.model_version
        )
        entry.input_map.update(step.input_map)
        entry.output_map.update(step.output_map)
    if config.sequence_batching is not None:
        sequence_config.write_sequence_batching(config.sequence_batching, message.sequence_batching)
    triton_fields.write_fields(config, message, proto_datatype)
    return message


# hardened input (issue 14 item 4)
def _check_file_name(file_name: str, where: str) -> None:
    """default_model_filename names a file in the version directory, never a path."""
    if file_name and (
        file_name in (".", "..") or any(c in file_name for c in "/\\\0:")
    ):
        raise ModelLoadError(
            f"{where}: default_model_filename must be a file name in the version directory "
            "(no path separators, no '..')"
        )
