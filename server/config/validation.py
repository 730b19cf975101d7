"""Normalize then validate a model's config once, at load; errors name the model and field."""

from __future__ import annotations

from dataclasses import replace

from sluice.server.config import triton_checks
from sluice.server.config.model import (
    DynamicBatching,
    ModelConfig,
    ModelIO,
    check_model_name,
)
from sluice.server.config.sequence_io import split_sequence_io
from sluice.server.errors import ModelLoadError
from sluice.server.types import DATATYPE_DTYPES, TensorSpec


def complete_model_config(
    config: ModelConfig, io: ModelIO, *, max_batch_size_set: bool, default_max_batch_size: int
) -> ModelConfig:
    """Normalize: fill inputs/outputs (and the batch size) from the model file, then validate.

    A declared tensor must exist in the model with the same datatype and compatible dims.
    """
    name = config.name
    io = split_sequence_io(config, io)  # sequence batching: controls and state are the server's
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
    if io.runtime is not None:  # metadata and config name what runs (an MLflow flavor)
        done = replace(done, backend=io.runtime[0], platform=io.runtime[1])
    validate_model_config(done)
    triton_checks.check_formats(done.inputs, name)  # Triton parity (issue 16)
    triton_checks.check_warmup(done)
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
    sequences = config.sequence_batching  # sequence batching (issue 16 item 5)
    for size in sequences.preferred_batch_sizes if sequences is not None else ():
        if not 0 < size <= max(config.max_batch_size, 1):
            raise ModelLoadError(
                f"model '{name}': sequence_batching.oldest.preferred_batch_size {size} must be "
                f"in 1..max_batch_size ({config.max_batch_size})"
            )
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
