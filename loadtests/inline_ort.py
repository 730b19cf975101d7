"""The simplest real KServe server: one onnxruntime call per request, on the event loop.

    python -m loadtests.inline_ort --model-dir DIR [--host 127.0.0.1] [--port 0]

The peer :mod:`loadtests.peers` puts beside Sluice: what a grpc.aio servicer of a screenful of
code gets on one model with no batching, no threads, no validation. ModelInfer reads each raw
input with ``np.frombuffer`` (dtype from the model's config, shape from the request), calls
``session.run`` once (one intra-op and one inter-op thread, sequential execution, CPU provider)
and answers every output as ``tobytes()``; the event loop is blocked for the model's whole run,
so concurrent requests queue in gRPC. A malformed request fails however numpy or onnxruntime
fail. ModelMetadata/ModelConfig come from :mod:`loadtests.peer_metadata`. Prints
``inline-ort: gRPC listening on HOST:PORT``; SIGTERM or SIGINT stop it. No ``server`` import.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtests.ceiling import serve_servicer
from loadtests.peer_metadata import DescribingServicer, PeerModel, datatype
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto.tensors import datatype_to_dtype


class InlineOrtServicer(DescribingServicer):
    """ModelInfer runs the model inline; the session is created once, here."""

    def __init__(self, model: PeerModel) -> None:
        super().__init__(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(model.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._dtypes = {t.name: datatype_to_dtype(datatype(t.data_type))
                        for t in model.config.input}
        self._outputs = [(t.name, datatype(t.data_type)) for t in model.config.output]
        self._names = [name for name, _ in self._outputs]

    async def ModelInfer(self, request, context):
        feeds = {
            t.name: np.frombuffer(raw, self._dtypes[t.name]).reshape(tuple(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        results = self._session.run(self._names, feeds)
        response = pb.ModelInferResponse(
            model_name=self.model.name, model_version=self.model.version, id=request.id
        )
        for (name, kind), array in zip(self._outputs, results, strict=True):
            response.outputs.add(name=name, datatype=kind, shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.inline_ort", description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    args = parser.parse_args(argv)
    servicer = InlineOrtServicer(PeerModel.load(args.model_dir))
    asyncio.run(serve_servicer(servicer, "inline-ort", args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
