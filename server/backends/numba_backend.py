"""Numba backend: tree ensembles (XGBoost JSON, LightGBM text) and pre/post-processing kernels.

Selected by ``backend: "numba"``, and by ``backend: "fil"`` so a repository written for Triton's
FIL backend loads as it is. Kernels are compiled (or loaded from Numba's cache) and run once at
model load, so the first request pays no JIT.

Tree models (a model file in the version directory: ``model.json`` / ``xgboost.json`` for
XGBoost JSON, ``model.txt`` for LightGBM) take ``input__0`` FP32 [-1, n_features] and answer
``output__0`` FP32, shaped by FIL's parameters:

- ``output_class: "false"`` (regression, the default): [-1, n_groups] (margin, or the objective's
  transform applied);
- ``output_class: "true"`` and ``predict_proba: "true"``: class probabilities [-1, n_classes]
  (a binary model gives [1 - p, p]);
- ``output_class: "true"`` and ``predict_proba: "false"``: the class [-1, 1] as FP32 (binary:
  ``p > threshold``, default 0.5; multiclass: argmax).

Processing kernels (``parameters { key: "kernel" ... }``; ``backend: "numba"`` only) take
``INPUT0`` FP32 [-1, n] and answer ``OUTPUT0``: ``standardize`` and ``minmax_scale`` (arrays
``mean``/``std`` or ``lo``/``hi`` in ``<version>/params.npz``), ``softmax``, ``sigmoid``,
``argmax`` (INT64 [-1, 1]), ``threshold`` (parameter ``threshold``; INT64 [-1, n]), ``topk``
(parameter ``k``; outputs ``values`` FP32 [-1, k], ``indices`` INT64 [-1, k] and, with a
``labels.txt`` of one label per line, ``labels`` BYTES [-1, k]).

``instance_group { kind: KIND_GPU }`` runs trees on the GPU with Numba CUDA (device buffers
reused between batches); with no GPU the load fails clearly, unless KIND_AUTO was asked, which
falls back to the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sluice.kernels import cpu
from sluice.kernels.forest import Forest
from sluice.kernels.formats import FormatError, load_tree_model
from sluice.server.backends.base import InstancesBackend
from sluice.server.config.model import InstanceKind, ModelConfig, ModelIO
from sluice.server.errors import ModelLoadError
from sluice.server.types import TensorSpec

FIL_PARAMETERS = frozenset({"model_type", "output_class", "predict_proba", "threshold"})
KERNELS = ("standardize", "minmax_scale", "softmax", "sigmoid", "argmax", "threshold", "topk")
_KERNEL_PARAMETERS = frozenset({"kernel", "k", "threshold"})

log = logging.getLogger(__name__)


def _flag(params: dict[str, str], key: str, default: bool, where: str) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ModelLoadError(f"{where}: parameter '{key}' must be true or false, got {value!r}")


def _number(params: dict[str, str], key: str, default: float, where: str) -> float:
    try:
        return float(params.get(key, default))
    except ValueError:
        raise ModelLoadError(f"{where}: parameter '{key}' must be a number") from None


def _parameters(
    config: ModelConfig, allowed: frozenset[str], where: str, what: str
) -> dict[str, str]:
    """The model's parameters, or a load error naming every one ``what`` does not support."""
    params = dict(config.parameters)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ModelLoadError(
            f"{where}: parameter(s) {unknown} not supported by {what} "
            f"(supported: {sorted(allowed)})"
        )
    return params


def _wants_gpu(config: ModelConfig, where: str) -> bool:
    kinds = {g.kind for g in config.instance_groups}
    if InstanceKind.GPU not in kinds and InstanceKind.AUTO not in kinds:
        return False
    from sluice.kernels.cuda import gpu_available  # imported only when a GPU is asked for

    if gpu_available():
        return True
    if InstanceKind.GPU in kinds:
        raise ModelLoadError(
            f"{where}: instance_group kind KIND_GPU asked for, but no CUDA GPU is available "
            "(use KIND_AUTO to fall back to the CPU)"
        )
    return False


class TreeBackend(InstancesBackend):
    """A tree ensemble served with FIL's input/output conventions."""

    def __init__(self, config: ModelConfig, version_dir: Path, forest: Forest | None = None
                 ) -> None:
        """``forest``: a model already read (an MLflow model's file); None reads the version
        directory's model file as FIL does."""
        super().__init__(config.instance_count)
        where = self._where = f"model '{config.name}' version {version_dir.name}"
        params = _parameters(config, FIL_PARAMETERS, where, "the numba/fil backend")
        try:
            self.forest: Forest = forest or load_tree_model(version_dir, params.get("model_type"))
        except FormatError as exc:
            raise ModelLoadError(f"{where}: {exc}") from None
        forest = self.forest
        self._classify = _flag(params, "output_class", False, where)
        self._proba = _flag(params, "predict_proba", False, where)
        self._threshold = _number(params, "threshold", 0.5, where)
        if self._classify and forest.transform == "identity":
            raise ModelLoadError(
                f"{where}: output_class is true but the model is a regressor (its objective has "
                "no sigmoid or softmax)"
            )
        binary = forest.transform == "sigmoid" and forest.n_groups == 1
        if self._classify and self._proba:
            width = 2 if binary else forest.n_groups
        elif self._classify:
            width = 1
        else:
            width = forest.n_groups
        self._gpu = None
        if _wants_gpu(config, where):
            from sluice.kernels.cuda import ForestGPU

            self._gpu = ForestGPU(forest)
            self.notes = ("trees run on the GPU (Numba CUDA)",)
        self._binary = binary
        self._gpu_lock = threading.Lock()  # ForestGPU reuses its device buffers
        self.inline_safe = self._gpu is None  # CPU kernels are plain functions of their inputs
        self.io = ModelIO(
            inputs=(TensorSpec("input__0", "FP32", (-1, forest.n_features)),),
            outputs=(TensorSpec("output__0", "FP32", (-1, width)),),
        )

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["input__0"]
        if self._gpu is not None:
            with self._gpu_lock:
                scores = self._gpu.predict(x)
        else:
            scores = cpu.forest_predict(self.forest, x)
        return {"output__0": self._shape_output(scores)}

    def _shape_output(self, scores: np.ndarray) -> np.ndarray:
        if not self._classify:
            return scores
        if self._binary:
            p = scores[:, 0]
            if self._proba:
                return np.stack([1.0 - p, p], axis=1).astype(np.float32)
            return (p > self._threshold).astype(np.float32)[:, None]
        if self._proba:
            return scores
        return scores.argmax(axis=1).astype(np.float32)[:, None]

    def warmup(self, config: ModelConfig) -> None:
        """Run the kernels this model uses (serial, and parallel when batches can exceed one
        block), compiling them or reading them from Numba's cache."""
        with _kernel_log(self._where, cpu.FOREST_KERNELS):
            for rows in sorted({1, max(config.max_batch_size, 1)}):
                self.run(0, {"input__0": np.zeros((rows, self.forest.n_features), np.float32)})

    def close(self) -> None:
        self._gpu = None


class KernelBackend(InstancesBackend):
    """One pre/post-processing kernel as a model (a pipeline step)."""

    inline_safe = True  # CPU @njit kernels: plain functions of their inputs

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        super().__init__(config.instance_count)
        where = self._where = f"model '{config.name}' version {version_dir.name}"
        params = _parameters(config, _KERNEL_PARAMETERS, where, "kernels")
        self.kernel = params["kernel"]
        if self.kernel not in KERNELS:
            raise ModelLoadError(f"{where}: unknown kernel '{self.kernel}' (one of {KERNELS})")
        self._arrays: dict[str, np.ndarray] = {}
        width = -1
        if self.kernel in ("standardize", "minmax_scale"):
            names = ("mean", "std") if self.kernel == "standardize" else ("lo", "hi")
            path = version_dir / "params.npz"
            try:
                with np.load(path, allow_pickle=False) as data:
                    self._arrays = {n: np.ascontiguousarray(data[n], np.float64) for n in names}
            except FileNotFoundError:
                raise ModelLoadError(f"{where}: params.npz with {list(names)} not found") from None
            except KeyError as exc:
                raise ModelLoadError(f"{where}: params.npz has no array {exc}") from None
            except ValueError as exc:
                raise ModelLoadError(f"{where}: params.npz is unreadable: {exc}") from None
            shapes = {a.shape for a in self._arrays.values()}
            if len(shapes) != 1 or len(next(iter(shapes))) != 1:
                raise ModelLoadError(f"{where}: params.npz arrays must be 1-D and equally long")
            width = next(iter(shapes))[0]
        self._k = int(_number(params, "k", 1, where))
        self._t = _number(params, "threshold", 0.5, where)
        self._labels: np.ndarray | None = None
        labels = version_dir / "labels.txt"
        if self.kernel == "topk" and labels.is_file():
            lines = labels.read_text(encoding="utf-8").splitlines()
            self._labels = np.array([line.encode() for line in lines], dtype=object)
        self.io = ModelIO(
            inputs=(TensorSpec("INPUT0", "FP32", (-1, width)),), outputs=self._outputs(width)
        )

    def _outputs(self, width: int) -> tuple[TensorSpec, ...]:
        if self.kernel == "argmax":
            return (TensorSpec("OUTPUT0", "INT64", (-1, 1)),)
        if self.kernel == "threshold":
            return (TensorSpec("OUTPUT0", "INT64", (-1, width)),)
        if self.kernel == "topk":
            out = (
                TensorSpec("values", "FP32", (-1, self._k)),
                TensorSpec("indices", "INT64", (-1, self._k)),
            )
            if self._labels is not None:
                out += (TensorSpec("labels", "BYTES", (-1, self._k)),)
            return out
        return (TensorSpec("OUTPUT0", "FP32", (-1, width)),)

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = cpu.readonly(np.ascontiguousarray(inputs["INPUT0"], dtype=np.float32))
        n = x.shape[0]
        kernel = self.kernel
        if kernel == "argmax":
            out = np.empty(n, np.int64)
            cpu.argmax(x, out)
            return {"OUTPUT0": out[:, None]}
        if kernel == "threshold":
            out_int = np.empty(x.shape, np.int64)
            cpu.threshold(x, self._t, out_int)
            return {"OUTPUT0": out_int}
        if kernel == "topk":
            values = np.empty((n, self._k), np.float32)
            indices = np.empty((n, self._k), np.int64)
            cpu.topk(x, self._k, values, indices)
            result: dict[str, Any] = {"values": values, "indices": indices}
            if self._labels is not None:
                result["labels"] = self._labels[np.clip(indices, 0, len(self._labels) - 1)]
            return result
        out_f = np.empty(x.shape, np.float32)
        if kernel == "standardize":
            cpu.standardize(x, self._arrays["mean"], self._arrays["std"], out_f)
        elif kernel == "minmax_scale":
            cpu.minmax_scale(x, self._arrays["lo"], self._arrays["hi"], out_f)
        elif kernel == "softmax":
            cpu.softmax(x, out_f)
        else:
            cpu.sigmoid(x, out_f)
        return {"OUTPUT0": out_f}

    def warmup(self, config: ModelConfig) -> None:
        """Run this model's kernel, compiling it or reading it from Numba's cache."""
        width = config.inputs[0].dims[-1] if config.inputs else -1
        cols = max(width, self._k, 1) if width == -1 else width
        with _kernel_log(self._where, (getattr(cpu, self.kernel),)):
            for rows in sorted({1, max(config.max_batch_size, 1)}):
                self.run(0, {"INPUT0": np.zeros((rows, cols), np.float32)})

    def close(self) -> None:
        self._arrays = {}


@contextlib.contextmanager
def _kernel_log(where: str, kernels: tuple[Any, ...]) -> Iterator[None]:
    """Log what the warm-up inside cost in ``kernels``: compiled now (a cold start: seconds
    each), or read from Numba's cache (a later start); nothing when this process had them
    already. A model warming up the same kernels at the same time is counted in both."""
    specs, hits = cpu.compile_counts(kernels)
    started = time.perf_counter()
    yield
    new_specs, new_hits = cpu.compile_counts(kernels)
    cached = new_hits - hits
    compiled = new_specs - specs - cached
    if compiled or cached:
        log.info("%s: %d Numba kernel specialisation(s) compiled, %d read from Numba's cache, "
                 "in %.1fs", where, max(compiled, 0), cached, time.perf_counter() - started)


def load_numba_backend(config: ModelConfig, version_dir: Path) -> TreeBackend | KernelBackend:
    """The tree or kernel backend ``config`` describes."""
    if "kernel" in config.parameters:
        if config.backend == "fil":
            raise ModelLoadError(
                f"model '{config.name}': processing kernels need backend 'numba', not 'fil'"
            )
        return KernelBackend(config, version_dir)
    return TreeBackend(config, version_dir)
