"""The config.pbtxt fields of Triton's examples that Sluice keeps beside its own (issue 16):
``model_warmup`` (warm-up samples), ``input.format`` and ``output.label_filename``.

Read from and written back to Triton's ModelConfig message here, so :mod:`.pbtxt` only calls in.
Errors name the model, the sample and the input.
"""

from __future__ import annotations

from collections.abc import Iterable

from sluice.proto import model_config_pb2 as mc
from sluice.server.config.model import ModelConfig, WarmupInput, WarmupSample
from sluice.server.errors import ModelLoadError

#: Field paths of these features (added to the supported fields of config.pbtxt).
FIELDS = frozenset({
    "input.format", "output.label_filename",
    "model_warmup", "model_warmup.name", "model_warmup.batch_size", "model_warmup.count",
    "model_warmup.inputs", "model_warmup.inputs.key", "model_warmup.inputs.value",
    "model_warmup.inputs.value.data_type", "model_warmup.inputs.value.dims",
    "model_warmup.inputs.value.zero_data", "model_warmup.inputs.value.random_data",
    "model_warmup.inputs.value.input_data_file",
})
_SOURCES = {"zero_data": "zero", "random_data": "random", "input_data_file": "file"}


def check_file_name(file_name: str, what: str, where: str) -> str:
    """``file_name`` if it names a file in one directory (no separators, no '..'), else raise."""
    if not file_name or file_name in (".", "..") or any(c in file_name for c in "/\\\0:"):
        raise ModelLoadError(
            f"{where}: {what} must be a file name in the model directory "
            "(no path separators, no '..')"
        )
    return file_name


def input_format(tensor: mc.ModelInput) -> str | None:
    """"FORMAT_NHWC" / "FORMAT_NCHW", or None for FORMAT_NONE."""
    return None if tensor.format == mc.ModelInput.FORMAT_NONE else (
        mc.ModelInput.Format.Name(tensor.format)
    )


def label_file(tensor: mc.ModelOutput, where: str) -> str | None:
    if not tensor.label_filename:
        return None
    return check_file_name(
        tensor.label_filename, f"output '{tensor.name}' label_filename", where
    )


def warmup_from_proto(
    samples: Iterable[mc.ModelWarmup], where: str, datatype_name
) -> tuple[WarmupSample, ...]:
    """The model_warmup samples; ``datatype_name`` turns TYPE_FP32 into "FP32"."""
    out = []
    for index, sample in enumerate(samples):
        label = f"{where}: model_warmup '{sample.name or index}'"
        inputs = {}
        for name, spec in sample.inputs.items():
            which = spec.WhichOneof("input_data_type")
            if which is None:
                raise ModelLoadError(
                    f"{label}: input '{name}' needs one of zero_data, random_data, "
                    "input_data_file"
                )
            if spec.data_type == mc.TYPE_INVALID:
                raise ModelLoadError(f"{label}: input '{name}' has no data_type")
            data_file = None
            if which == "input_data_file":
                data_file = check_file_name(
                    spec.input_data_file, f"input '{name}' input_data_file", label
                )
            inputs[name] = WarmupInput(
                datatype=datatype_name(spec.data_type), dims=tuple(spec.dims),
                source=_SOURCES[which], data_file=data_file,
            )
        out.append(WarmupSample(
            name=sample.name or str(index), batch_size=sample.batch_size,
            inputs=inputs, count=max(sample.count, 1),
        ))
    return tuple(out)


def write_fields(config: ModelConfig, message: mc.ModelConfig, proto_datatype) -> None:
    """Add format, label_filename and model_warmup of ``config`` to ``message`` (whose inputs
    and outputs are already written, in the config's order)."""
    for spec, tensor in zip(config.inputs, message.input, strict=True):
        if spec.format is not None:
            tensor.format = mc.ModelInput.Format.Value(spec.format)
    for spec, tensor in zip(config.outputs, message.output, strict=True):
        if spec.label_filename is not None:
            tensor.label_filename = spec.label_filename
    for sample in config.warmup:
        entry = message.model_warmup.add(
            name=sample.name, batch_size=sample.batch_size, count=sample.count
        )
        for name, spec in sample.inputs.items():
            target = entry.inputs[name]
            target.data_type = proto_datatype(spec.datatype)
            target.dims.extend(spec.dims)
            if spec.source == "zero":
                target.zero_data = True
            elif spec.source == "random":
                target.random_data = True
            else:
                target.input_data_file = spec.data_file or ""
