"""Pipelines: Triton's ``platform: "ensemble"`` with ``ensemble_scheduling`` steps.

Unlike Triton, a Sluice pipeline is batched once, at its entry: the pipeline's own batcher forms
a batch, then this backend runs every step's backend on that batch in turn, on the pipeline's
instance thread, keeping intermediate tensors in memory. Steps are resolved by name at every
batch, so reloading a step model takes effect without reloading the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sluice.server.backends.base import Backend, InstancesBackend, warmup_inputs
from sluice.server.config.model import ModelConfig, ModelIO
from sluice.server.errors import ModelLoadError
from sluice.server.types import TensorSpec

#: lookup(model_name, version or -1 for the newest) -> (that version's backend, its config).
StepLookup = Callable[[str, int], tuple[Backend, ModelConfig]]


class EnsembleBackend(InstancesBackend):
    """Runs ``config.ensemble_steps`` in order on each batch."""

    def __init__(self, config: ModelConfig, version_dir: Path, lookup: StepLookup) -> None:
        where = f"ensemble '{config.name}'"
        if not config.ensemble_steps:
            raise ModelLoadError(f"{where}: ensemble_scheduling has no step")
        if not config.inputs or not config.outputs:
            raise ModelLoadError(f"{where}: an ensemble must declare its inputs and outputs")
        super().__init__(config.instance_count)
        self._lookup = lookup
        self._steps = config.ensemble_steps
        self.notes: tuple[str, ...] = (
            "pipeline: " + " -> ".join(step.model_name for step in self._steps),
        )
        self._check(config, where)
        batch = (-1,) if config.max_batch_size > 0 else ()
        self.io = ModelIO(
            inputs=tuple(TensorSpec(t.name, t.datatype, (*batch, *t.dims)) for t in config.inputs),
            outputs=tuple(
                TensorSpec(t.name, t.datatype, (*batch, *t.dims)) for t in config.outputs
            ),
        )
        self._outputs = [t.name for t in config.outputs]

    def _check(self, config: ModelConfig, where: str) -> None:
        """Every step exists, gets every input it needs, and the types line up."""
        known = {t.name: t.datatype for t in config.inputs}
        for number, step in enumerate(self._steps, 1):
            label = f"{where} step {number} ('{step.model_name}')"
            try:
                _, step_config = self._lookup(step.model_name, step.model_version)
            except Exception as exc:
                raise ModelLoadError(f"{label}: step model is not loaded ({exc})") from None
            if config.max_batch_size > step_config.max_batch_size:
                raise ModelLoadError(
                    f"{label}: max_batch_size {step_config.max_batch_size} is smaller than the "
                    f"ensemble's {config.max_batch_size}"
                )
            for model_input, tensor in step.input_map.items():
                spec = step_config.input(model_input)
                if spec is None:
                    raise ModelLoadError(f"{label}: the model has no input '{model_input}'")
                if tensor not in known:
                    raise ModelLoadError(
                        f"{label}: input_map reads '{tensor}', which no earlier step or "
                        "ensemble input provides"
                    )
                if known[tensor] != spec.datatype:
                    raise ModelLoadError(
                        f"{label}: '{tensor}' is {known[tensor]} but input '{model_input}' "
                        f"takes {spec.datatype}"
                    )
            missing = [t.name for t in step_config.inputs
                       if not t.optional and t.name not in step.input_map]
            if missing:
                raise ModelLoadError(f"{label}: input_map leaves input(s) {missing} unfed")
            for model_output, tensor in step.output_map.items():
                spec = step_config.output(model_output)
                if spec is None:
                    raise ModelLoadError(f"{label}: the model has no output '{model_output}'")
                known[tensor] = spec.datatype
        for t in config.outputs:
            if t.name not in known:
                raise ModelLoadError(f"{where}: no step produces output '{t.name}'")

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = dict(inputs)
        for step in self._steps:
            backend, step_config = self._lookup(step.model_name, step.model_version)
            feeds = {}
            for model_input, tensor in step.input_map.items():
                value = tensors[tensor]
                spec = step_config.input(model_input)
                if spec is not None and spec.reshape is not None:
                    value = value.reshape((value.shape[0], *spec.reshape))
                feeds[model_input] = value
            outputs = backend.run(instance % backend.instance_count, backend.prepare(feeds))
            for model_output, tensor in step.output_map.items():
                value = outputs[model_output]
                spec = step_config.output(model_output)
                if spec is not None and spec.reshape is not None:
                    value = value.reshape((value.shape[0], *spec.dims))
                tensors[tensor] = value
        return {name: tensors[name] for name in self._outputs}

    def warmup(self, config: ModelConfig) -> None:
        for rows in sorted({1, max(config.max_batch_size, 1)}):
            self.run(0, warmup_inputs(config, rows))

    def close(self) -> None:
        self._steps = ()

