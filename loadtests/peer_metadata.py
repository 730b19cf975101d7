"""What a KServe client asks about a model before it sends one request, for the bare servicers
:mod:`loadtests.peers` measures (:mod:`loadtests.ceiling`, :mod:`loadtests.inline_ort`).

perf_analyzer calls ServerMetadata, ModelMetadata (input names, datatypes, shapes) and
ModelConfig (max_batch_size, which decides whether ``-b`` adds a batch dim) before it sends any
ModelInfer; a servicer missing any of them cannot be measured with it. :class:`PeerModel`
reads one Triton-layout model directory (``config.pbtxt`` plus the ONNX file of its highest
version; inputs and outputs the config leaves out are read from the ONNX file) and builds the
answers once; :class:`DescribingServicer` serves them, with ServerLive, ServerReady and
ModelReady, for that one model (NOT_FOUND for any other name). Nothing here imports ``server``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import text_format

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc, model_config_pb2
from sluice.proto.tensors import datatype_to_dtype, make_output

# onnxruntime's element type strings -> config data types, for inputs the config leaves out.
_ORT_TYPES = {
    "tensor(float)": model_config_pb2.TYPE_FP32,
    "tensor(double)": model_config_pb2.TYPE_FP64,
    "tensor(int64)": model_config_pb2.TYPE_INT64,
    "tensor(int32)": model_config_pb2.TYPE_INT32,
    "tensor(uint8)": model_config_pb2.TYPE_UINT8,
    "tensor(bool)": model_config_pb2.TYPE_BOOL,
}


def datatype(data_type: int) -> str:
    """Config enum -> KServe datatype: ``TYPE_FP32`` -> ``FP32``, ``TYPE_STRING`` -> ``BYTES``."""
    name = model_config_pb2.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def _fill_from_onnx(config: model_config_pb2.ModelConfig, onnx_path: Path) -> None:
    import onnxruntime as ort  # only when the config leaves tensors out

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    skip = 1 if config.max_batch_size > 0 else 0
    for declared, found in ((config.input, session.get_inputs()),
                            (config.output, session.get_outputs())):
        if len(declared) == 0:
            for arg in found:
                declared.add(name=arg.name, data_type=_ORT_TYPES[arg.type],
                             dims=[d if isinstance(d, int) else -1 for d in arg.shape[skip:]])


@dataclass(frozen=True)
class PeerModel:
    """One model as the bare servicers describe it; answers are built once, at load."""

    name: str
    version: str
    onnx_path: Path
    config: model_config_pb2.ModelConfig
    metadata: pb.ModelMetadataResponse
    config_response: pb.ModelConfigResponse

    @classmethod
    def load(cls, model_dir: Path) -> PeerModel:
        """Read ``model_dir/config.pbtxt`` and ``model_dir/<highest version>/model.onnx``."""
        config = text_format.Parse(
            (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        config.name = config.name or model_dir.name
        versions = sorted((p for p in model_dir.iterdir() if p.name.isdigit()),
                          key=lambda p: int(p.name))
        if not versions:
            raise FileNotFoundError(f"{model_dir}: no numbered version directory")
        onnx_path = versions[-1] / "model.onnx"
        if len(config.input) == 0 or len(config.output) == 0:
            _fill_from_onnx(config, onnx_path)
        batch = [-1] if config.max_batch_size > 0 else []
        metadata = pb.ModelMetadataResponse(
            name=config.name, versions=[versions[-1].name],
            platform=config.platform or "onnxruntime_onnx",
        )
        for declared, described in ((config.input, metadata.inputs),
                                    (config.output, metadata.outputs)):
            for tensor in declared:
                described.add(name=tensor.name, datatype=datatype(tensor.data_type),
                              shape=[*batch, *tensor.dims])
        return cls(
            name=config.name, version=versions[-1].name, onnx_path=onnx_path, config=config,
            metadata=metadata, config_response=pb.ModelConfigResponse(config=config),
        )

    def zeros_response(self) -> pb.ModelInferResponse:
        """The model's answer shape to a batch-1 request, every output zeros."""
        response = pb.ModelInferResponse(model_name=self.name, model_version=self.version)
        batch = [1] if self.config.max_batch_size > 0 else []
        for tensor in self.config.output:
            dims = [max(int(d), 1) for d in tensor.dims]
            array = np.zeros([*batch, *dims], datatype_to_dtype(datatype(tensor.data_type)))
            out, raw = make_output(tensor.name, array)
            response.outputs.append(out)
            response.raw_output_contents.append(raw)
        return response


class DescribingServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Liveness, readiness, ServerMetadata, ModelMetadata and ModelConfig of one model."""

    def __init__(self, model: PeerModel) -> None:
        self.model = model

    async def _known(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name != self.model.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{name}'")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="peer", version="0")

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self.model.name)

    async def ModelMetadata(self, request, context):
        await self._known(request.name, context)
        return self.model.metadata

    async def ModelConfig(self, request, context):
        await self._known(request.name, context)
        return self.model.config_response
