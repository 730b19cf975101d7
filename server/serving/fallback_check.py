"""A model's ``fallback_model`` (degraded mode) must be able to answer its requests: loaded,
batching alike, taking every input and giving every output with the same datatypes and
compatible shapes. Checked when the model loads (moved out of repository.py)."""

from __future__ import annotations

from collections.abc import Callable

from sluice.server.config.model import ModelConfig
from sluice.server.errors import ModelLoadError
from sluice.server.serving.model import ModelVersion


def check_fallback(
    config: ModelConfig, newest: Callable[[str], ModelVersion | None]
) -> None:
    """A fallback must be loaded and take every input and give every output of ``config``
    with the same datatypes and compatible shapes."""
    name = config.overload.fallback_model
    if name is None:
        return
    where = f"model '{config.name}': fallback_model '{name}'"
    target = newest(name)
    if target is None:
        raise ModelLoadError(f"{where} is not loaded (load it before this model)")
    other = target.config
    if (other.max_batch_size > 0) != (config.max_batch_size > 0) or (
        other.max_batch_size < config.max_batch_size
    ):
        raise ModelLoadError(
            f"{where} has max_batch_size {other.max_batch_size}; it needs at least "
            f"{config.max_batch_size}" + (" and batching" if config.max_batch_size else
                                          " and no batching")
        )
    for kind, ours, find in (
        ("input", config.inputs, other.input), ("output", config.outputs, other.output),
    ):
        for spec in ours:
            theirs = find(spec.name)
            if theirs is None or theirs.datatype != spec.datatype or not _compatible(
                spec.dims, theirs.dims
            ):
                have = "none" if theirs is None else f"{theirs.datatype} {list(theirs.dims)}"
                raise ModelLoadError(
                    f"{where}: {kind} '{spec.name}' is {spec.datatype} {list(spec.dims)} "
                    f"here, {have} there"
                )
    names = {spec.name for spec in config.inputs}
    missing = [t.name for t in other.inputs if not t.optional and t.name not in names]
    if missing:
        raise ModelLoadError(f"{where} needs input(s) {missing} that this model lacks")


def _compatible(ours: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    return len(ours) == len(theirs) and all(
        a == b or -1 in (a, b) for a, b in zip(ours, theirs, strict=True)
    )
