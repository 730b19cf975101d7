"""ONNX Runtime backend: one InferenceSession per instance.

CPUExecutionProvider by default. ``instance_group { kind: KIND_GPU }`` (or KIND_AUTO on a machine
with CUDA) asks for CUDAExecutionProvider, plus TensorRT when the config lists it as a GPU
execution accelerator. When a provider is missing the model still loads on the CPU: a warning is
logged and the fallback is recorded in ``notes`` (shown in model metadata). Never a crash.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sluice.server.backends.base import warmup_inputs
from sluice.server.backends.external_data import check_external_data
from sluice.server.config.model import InstanceKind, ModelConfig, ModelIO
from sluice.server.config.redaction import redact_paths
from sluice.server.errors import InvalidInput, ModelLoadError
from sluice.server.types import TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def choose_providers(
    config: ModelConfig, available: list[str]
) -> tuple[list[Any], tuple[str, ...]]:
    """Execution providers for ``config`` given what this onnxruntime build offers.

    Returns the provider list and notes about any fallback.
    """
    kinds = {g.kind for g in config.instance_groups}
    gpus = next((g.gpus for g in config.instance_groups if g.gpus), ())
    device = gpus[0] if gpus else 0
    want_gpu = InstanceKind.GPU in kinds
    auto = InstanceKind.AUTO in kinds
    notes: list[str] = []
    providers: list[Any] = []
    if want_gpu or auto:
        if "CUDAExecutionProvider" in available:
            if "tensorrt" in config.gpu_accelerators:
                if "TensorrtExecutionProvider" in available:
                    providers.append(("TensorrtExecutionProvider", {"device_id": device}))
                else:
                    notes.append("TensorRT requested but not in this onnxruntime build; using CUDA")
            providers.append(("CUDAExecutionProvider", {"device_id": device}))
        elif want_gpu:
            notes.append(
                "KIND_GPU requested but CUDAExecutionProvider is not available; running on CPU"
            )
    providers.append("CPUExecutionProvider")
    return providers, tuple(notes)


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor '{arg.name}' has unsupported ONNX type {arg.type}")
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, datatype=datatype, dims=dims)


def _direct_run(session: ort.InferenceSession) -> Any:
    """``session.run`` without the Python wrapper's per-call checks, for a CPU-only session.

    ``InferenceSession.run`` checks, in Python, on every call: that no WebGPU graph capture is
    on, that every required input is fed, and that OrtValue inputs belong to the session, and
    retries on another provider after an EP failure. Here none applies or each is already
    done: the providers are CPU only (no capture, nothing to fall back to), the inputs are
    numpy arrays that :class:`~sluice.server.serving.model.ModelVersion` checked against the
    model's inputs (and the C++ run checks names, types and shapes again). That wrapper was
    ~5 us of a ~18 us identity run on the 2-core development machine. Falls back to the
    wrapper when this onnxruntime has no ``_sess`` or graph capture is on. Either is called as
    ``run(output_names, feed, None)``."""
    inner = getattr(session, "_sess", None)
    capture = getattr(inner, "is_webgpu_graph_capture_enabled", None)
    if inner is None or not hasattr(inner, "run") or (capture is not None and capture()):
        return session.run
    return inner.run  # (output_names, feed, run_options), as the wrapper calls it


class OrtBackend:
    """One ONNX model version with ``config.instance_count`` sessions."""

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        path = version_dir / config.default_model_filename
        if not path.is_file():
            raise ModelLoadError(
                f"model '{config.name}' version {version_dir.name}: "
                f"{config.default_model_filename} not found"
            )
        providers, notes = choose_providers(config, ort.get_available_providers())
        for note in notes:
            log.warning("model '%s': %s", config.name, note)
        count = config.instance_count
        options = ort.SessionOptions()
        params = config.parameters
        intra = int(params.get("intra_op_thread_count", "0") or 0)
        if intra == 0 and count > 1:
            intra = max(1, (os.cpu_count() or 1) // count)
        options.intra_op_num_threads = intra
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", "0") or 0)
        # ORT's pool threads spin after each run by default; on a server whose event loop shares
        # the cores, spinning steals the CPU that answers requests. Opt back in per model.
        if params.get("allow_spinning", "").lower() not in ("1", "true", "yes"):
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._path, self._providers = path, providers
        self._background: ort.InferenceSession | None = None
        # hardened input: no tensor data from outside the version directory, whatever this
        # onnxruntime checks itself; and its error text without the server's paths
        check_external_data(path, f"model '{config.name}' version {version_dir.name}")
        try:
            self._sessions = [
                ort.InferenceSession(str(path), sess_options=options, providers=providers)
                for _ in range(count)
            ]
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(
                f"model '{config.name}' version {version_dir.name}: onnxruntime could not load "
                f"{config.default_model_filename}: {redact_paths(str(exc))}"
            ) from None
        session = self._sessions[0]
        used = session.get_providers()
        if any(isinstance(p, tuple) and p[0] == "CUDAExecutionProvider" for p in providers) and (
            "CUDAExecutionProvider" not in used
        ):
            notes += ("CUDAExecutionProvider failed to initialise; running on CPU",)
            log.warning("model '%s': CUDA provider failed to initialise; on CPU", config.name)
        self.providers = tuple(used)
        self.notes = notes
        self.inline_safe = self.providers == ("CPUExecutionProvider",)
        self.io = ModelIO(
            inputs=tuple(_spec(a) for a in session.get_inputs()),
            outputs=tuple(_spec(a) for a in session.get_outputs()),
        )
        self._output_names = [o.name for o in self.io.outputs]
        self._runs = [_direct_run(s) if self.inline_safe else s.run for s in self._sessions]
        self._string_inputs = {t.name for t in self.io.inputs if t.datatype == "BYTES"}

    @property
    def instance_count(self) -> int:
        return len(self._sessions)

    def prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """ONNX string tensors hold text: BYTES elements must be UTF-8 and become str."""
        if not self._string_inputs:
            return inputs
        inputs = dict(inputs)
        for name in self._string_inputs & inputs.keys():
            value = inputs[name]
            flat = value.ravel()
            text = np.empty(flat.shape, dtype=object)
            for i, element in enumerate(flat):
                try:
                    text[i] = element.decode("utf-8") if isinstance(element, bytes) else element
                except UnicodeDecodeError:
                    raise InvalidInput(
                        f"input '{name}': element {i} is not valid UTF-8 "
                        "(ONNX string tensors hold text)"
                    ) from None
            inputs[name] = text.reshape(value.shape)
        return inputs

    def run(self, instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._runs[instance](self._output_names, inputs, None)
        return dict(zip(self._output_names, results, strict=True))

    def run_background(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute on a session of its own with one thread, the caller's (ORT adds none), so
        the caller's OS priority is the work's priority: shadow copies run here, on a
        low-priority thread. Made on first use (the model's memory once more); one caller."""
        if self._background is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._background = ort.InferenceSession(
                str(self._path), sess_options=options, providers=self._providers
            )
        results = self._background.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))

    def warmup(self, config: ModelConfig) -> None:
        sizes = {1, max(config.max_batch_size, 1)}
        for instance in range(self.instance_count):
            for rows in sorted(sizes):
                self.run(instance, self.prepare(warmup_inputs(config, rows)))

    def close(self) -> None:
        self._sessions.clear()
        self._runs.clear()
        self._background = None
