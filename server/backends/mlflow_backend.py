"""MLflow models served through Sluice's own runtimes, answering what the model's ``predict`` does.

``onnx`` runs on :class:`~sluice.server.backends.ort.OrtBackend` (the file the flavor names);
``xgboost`` and ``lightgbm`` on the Numba tree kernels
(:class:`~sluice.server.backends.numba_backend.TreeBackend`), with the output MLflow's pyfunc
``predict`` gives: a Booster's (transformed) scores, a scikit-learn classifier's classes.

The signature names and types what is served, the runtime computes under its own names:

- tensor specs map to the runtime's tensors one for one (by name when every spec's name is one of
  the ONNX graph's, else in order; an unnamed spec keeps the runtime's name). Values are cast to
  the runtime's datatype on the way in and to the signature's on the way out;
- column specs are one input each, ``[-1, 1]`` of the column's datatype, named by the column;
  stacked in signature order into the runtime's one ``[-1, n]`` input (a tree model's features,
  an ONNX model's single matrix), or fed to the ONNX inputs of the same names;
- a one-dimensional signature tensor (``shape: [-1]``, one value per row) is served as
  ``[-1, 1]``: a batched KServe tensor has a dimension after the batch;
- no signature: the runtime's own tensors, classifiers' classes as INT64.

A ``config.pbtxt`` beside the version directories may still declare the tensors (a subset, a
fixed size, its own batch size); they must agree with what the signature gives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sluice.kernels.formats import FormatError, load_lightgbm_text, load_xgboost_json
from sluice.server.backends.base import Backend, warmup_inputs
from sluice.server.backends.mlflow_model import (
    MLflowModel,
    SignatureSpec,
    is_mlflow_model,
    read_mlmodel,
)
from sluice.server.backends.numba_backend import TreeBackend
from sluice.server.backends.ort import OrtBackend
from sluice.server.config.model import ModelConfig, ModelIO
from sluice.server.errors import ModelLoadError
from sluice.server.types import DATATYPE_DTYPES, TensorSpec

__all__ = ["MLflowBackend", "is_mlflow_model", "load_mlflow_backend"]

#: Flavor -> (backend, platform) the model reports, as a model of the same runtime written for
#: it reports itself: ONNX Runtime's, and the tree kernels' under Triton's FIL backend name.
RUNTIMES = {"onnx": ("onnxruntime", "onnxruntime_onnx"), "xgboost": ("fil", ""),
            "lightgbm": ("fil", "")}


@dataclass(frozen=True, slots=True)
class _In:
    """Runtime input ``inner`` from served inputs ``served`` (one, or columns to stack)."""

    inner: TensorSpec
    served: tuple[str, ...]
    stack: bool


@dataclass(frozen=True, slots=True)
class _Out:
    """Served output ``served`` from runtime output ``inner`` (column ``column`` of it, or all)."""

    served: TensorSpec
    inner: str
    column: int | None


class MLflowBackend:
    """An MLflow model version: a runtime backend plus the signature's names and types."""

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        where = f"model '{config.name}' version {version_dir.name}"
        self.model = model = read_mlmodel(version_dir, where)
        self._inner: Backend = _runtime(config, version_dir, model, where)
        self._ins, inputs = _plan_inputs(model.inputs, self._inner.io.inputs, where)
        self._outs = _plan_outputs(model, self._inner.io.outputs, where)
        self.io = ModelIO(inputs=inputs, outputs=tuple(o.served for o in self._outs),
                          runtime=RUNTIMES[model.flavor])
        self.notes = (*self._inner.notes, f"MLflow model, flavor '{model.flavor}'")
        self.inline_safe = self._inner.inline_safe

    @property
    def instance_count(self) -> int:
        return self._inner.instance_count

    def _to_inner(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for plan in self._ins:
            dtype = DATATYPE_DTYPES[plan.inner.datatype]
            if plan.stack:
                parts = [inputs[name].reshape(-1, 1) for name in plan.served]
                out[plan.inner.name] = np.concatenate(parts, axis=1).astype(dtype, copy=False)
                continue
            value = inputs[plan.served[0]]
            dims = plan.inner.dims
            if len(dims) != value.ndim and dims.count(-1) <= 1:
                value = value.reshape(tuple(value.shape[0] if i == 0 else d
                                            for i, d in enumerate(dims)))
            out[plan.inner.name] = value if value.dtype == dtype else value.astype(dtype)
        return out

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # ONNX string tensors: the runtime's own check (UTF-8), under the served names
        renamed = {p.inner.name: p.served[0] for p in self._ins
                   if not p.stack and p.inner.datatype == "BYTES"}
        if not renamed:
            return inputs
        checked = self._inner.prepare({k: inputs[v] for k, v in renamed.items() if v in inputs})
        return {**inputs, **{renamed[k]: v for k, v in checked.items()}}

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._inner.run(instance, self._to_inner(inputs))
        out = {}
        for plan in self._outs:
            value = results[plan.inner]
            if plan.column is not None:
                value = value.reshape(value.shape[0], -1)[:, plan.column]
            dims = plan.served.dims
            value = value.reshape(value.shape[0], *dims[1:]) if -1 not in dims[1:] else value
            dtype = DATATYPE_DTYPES[plan.served.datatype]
            out[plan.served.name] = value if value.dtype == dtype else value.astype(dtype)
        return out

    def warmup(self, config: ModelConfig) -> None:
        """Run every instance at batch 1 and at max batch, through the signature's mapping."""
        for instance in range(self.instance_count):
            for rows in sorted({1, max(config.max_batch_size, 1)}):
                self.run(instance, self.prepare(warmup_inputs(config, rows)))

    def close(self) -> None:
        self._inner.close()


def _runtime(config: ModelConfig, version_dir: Path, model: MLflowModel, where: str) -> Backend:
    """The runtime backend for the flavor, on the file it names."""
    relative = model.data.relative_to(version_dir).as_posix()
    if model.flavor == "onnx":
        return OrtBackend(replace(config, default_model_filename=relative), version_dir)
    try:
        forest = (load_xgboost_json(model.data) if model.flavor == "xgboost"
                  else load_lightgbm_text(model.data))
    except FormatError as exc:
        raise ModelLoadError(f"{where}: MLflow {model.flavor} model: {exc}") from None
    classify = model.is_classifier
    if classify and forest.transform == "identity":
        classify = False  # a classifier trained with a raw-score objective predicts scores
    params = {"output_class": str(classify).lower(), "predict_proba": "false"}
    return TreeBackend(replace(config, parameters=params), version_dir, forest)


def _plan_inputs(specs: tuple[SignatureSpec, ...] | None, inner: tuple[TensorSpec, ...],
                 where: str) -> tuple[list[_In], tuple[TensorSpec, ...]]:
    """How the served inputs become the runtime's, and the served inputs."""
    if specs is None:
        return [_In(t, (t.name,), False) for t in inner], inner
    if specs[0].is_column:
        names = [s.name or f"input_{i}" for i, s in enumerate(specs)]
        served = tuple(TensorSpec(n, s.datatype, (-1, 1)) for n, s in zip(names, specs,
                                                                          strict=True))
        by_name = {t.name: t for t in inner}
        if all(name in by_name for name in names):
            return [_In(by_name[name], (name,), False) for name in names], served
        width = inner[0].dims[-1] if len(inner) == 1 and len(inner[0].dims) == 2 else None
        if width is None or width not in (-1, len(specs)):
            have = ", ".join(f"'{t.name}' {list(t.dims)}" for t in inner)
            raise ModelLoadError(f"{where}: the MLflow signature has {len(specs)} input "
                                 f"columns, which match neither the model's inputs ({have}) by "
                                 "name nor its one matrix input by width")
        return [_In(inner[0], tuple(names), True)], served
    if len(specs) != len(inner):
        raise ModelLoadError(f"{where}: the MLflow signature has {len(specs)} input tensors, "
                             f"the model file {len(inner)}")
    ordered = _match(specs, inner)
    served = tuple(TensorSpec(s.name or t.name, s.datatype, _dims(s.shape))
                   for s, t in zip(specs, ordered, strict=True))
    return [_In(t, (v.name,), False) for t, v in zip(ordered, served, strict=True)], served


def _plan_outputs(model: MLflowModel, inner: tuple[TensorSpec, ...], where: str) -> list[_Out]:
    specs = model.outputs
    if specs is None:
        classes = model.flavor != "onnx" and model.is_classifier
        return [_Out(replace(t, datatype="INT64") if classes else t, t.name, None)
                for t in inner]
    if specs[0].is_column:
        if len(specs) == 1 and len(inner) == 1:
            spec = specs[0]
            return [_Out(TensorSpec(spec.name or inner[0].name, spec.datatype, (-1, 1)),
                         inner[0].name, 0 if inner[0].dims[1:] not in ((1,), ()) else None)]
        width = inner[0].dims[-1] if len(inner) == 1 else None
        if width != len(specs):
            raise ModelLoadError(f"{where}: the MLflow signature has {len(specs)} output "
                                 f"columns; the model gives {len(inner)} output(s)")
        return [_Out(TensorSpec(s.name or f"output_{i}", s.datatype, (-1, 1)), inner[0].name, i)
                for i, s in enumerate(specs)]
    if len(specs) != len(inner):
        raise ModelLoadError(f"{where}: the MLflow signature has {len(specs)} output tensors, "
                             f"the model file {len(inner)}")
    ordered = _match(specs, inner)
    return [_Out(TensorSpec(s.name or t.name, s.datatype, _dims(s.shape)), t.name, None)
            for s, t in zip(specs, ordered, strict=True)]


def _match(specs: tuple[SignatureSpec, ...], inner: tuple[TensorSpec, ...]
           ) -> tuple[TensorSpec, ...]:
    """The runtime tensors in signature order: by name when every spec names one, else as
    they come."""
    by_name = {t.name: t for t in inner}
    if all(s.name in by_name for s in specs):
        return tuple(by_name[s.name] for s in specs if s.name is not None)
    return inner


def _dims(shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Served full shape: a column or a one-dimensional tensor is one value per row."""
    if shape is None or len(shape) == 1:
        return (-1, 1) if shape is None or shape[0] == -1 else (*shape, 1)
    return shape


def load_mlflow_backend(config: ModelConfig, version_dir: Path) -> MLflowBackend:
    """The backend of the MLflow model in ``version_dir``. Blocking (reads and compiles)."""
    return MLflowBackend(config, version_dir)
