"""Checks of the Triton fields (issue 16) on a complete config, at load: warm-up samples that
match the model's inputs, image formats on three-dimensional inputs. No protobuf here (the
request path imports this through validation)."""

from __future__ import annotations

from sluice.server.config.model import ModelConfig
from sluice.server.errors import ModelLoadError
from sluice.server.types import TensorSpec


def check_warmup(config: ModelConfig) -> None:
    """Every sample names the model's inputs with their datatypes and dims, and a batch size the
    model takes (called on the complete config)."""
    where = f"model '{config.name}'"
    for sample in config.warmup:
        label = f"{where}: model_warmup '{sample.name}'"
        if config.max_batch_size > 0 and not 1 <= sample.batch_size <= config.max_batch_size:
            raise ModelLoadError(
                f"{label}: batch_size {sample.batch_size} is outside 1..{config.max_batch_size} "
                "(max_batch_size)"
            )
        if config.max_batch_size == 0 and sample.batch_size > 1:
            raise ModelLoadError(
                f"{label}: batch_size {sample.batch_size} needs a model that batches "
                "(max_batch_size is 0)"
            )
        for name, spec in sample.inputs.items():
            declared = config.input(name)
            if declared is None:
                raise ModelLoadError(
                    f"{label}: input '{name}' is not an input of the model "
                    f"(it takes {[t.name for t in config.inputs]})"
                )
            if declared.datatype != spec.datatype:
                raise ModelLoadError(
                    f"{label}: input '{name}' is {spec.datatype} here, {declared.datatype} "
                    "in the model"
                )
            if len(spec.dims) != len(declared.dims) or any(
                d != -1 and d != s for s, d in zip(spec.dims, declared.dims, strict=True)
            ) or any(s < 0 for s in spec.dims):
                raise ModelLoadError(
                    f"{label}: input '{name}' has dims {list(spec.dims)}; the model takes "
                    f"{list(declared.dims)} (batch dimension excluded)"
                )
        missing = [t.name for t in config.inputs if not t.optional and t.name not in sample.inputs]
        if missing:
            raise ModelLoadError(f"{label}: no data for input(s) {missing}")


def check_formats(inputs: tuple[TensorSpec, ...], name: str) -> None:
    """An input with an image format has three dims (batch excluded), as Triton requires."""
    for spec in inputs:
        if spec.format is not None and len(spec.dims) != 3:
            raise ModelLoadError(
                f"model '{name}': input '{spec.name}' has format {spec.format}, which needs "
                f"3 dims (batch dimension excluded), but it has {list(spec.dims)}"
            )
