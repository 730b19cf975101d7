"""MLServer 1.7.1 as a peer of :mod:`loadtests.peers`, run from an interpreter that has it.

MLServer has no ONNX runtime of its own, so one model is served by a custom runtime of the
plainest kind (written next to ``settings.json`` in a folder this module fills): ``load()``
opens an onnxruntime session (CPU provider, default options), ``predict()`` decodes every input
with ``NumpyCodec``, runs the session once and encodes every output. ``parallel_workers`` is 0
(inference in the server process, as the other peers do) and adaptive batching is off (MLServer's
default). The process is ``PYTHON -m mlserver.cli.main start FOLDER`` on free ports picked here;
it is ready when its ServerReady and ModelReady both say so over gRPC. It is stopped by its own
pid (SIGTERM, then SIGKILL).

perf_analyzer asks every server for ModelConfig, a Triton extension MLServer's gRPC servicer does
not implement (as of 1.7.1); when it fails on that, the peers table shows MLServer's points as
errors, with perf_analyzer's message in the JSON. Nothing here imports ``mlserver``: that
package lives only in the other interpreter.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import grpc

from loadtests.peer_metadata import PeerModel
from loadtests.procs import terminate
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc

_RUNTIME = '''"""Written by loadtests.peer_mlserver: one onnxruntime call per request."""
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxPeerModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._names, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(self._names, results)],
        )
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_folder(folder: Path, model: PeerModel, grpc_port: int) -> None:
    """``settings.json``, the runtime module and ``MODEL/model-settings.json`` under ``folder``."""
    settings = {
        "debug": False, "host": "127.0.0.1", "grpc_port": grpc_port,
        "http_port": _free_port(), "parallel_workers": 0, "metrics_endpoint": None,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "peer_runtime.py").write_text(_RUNTIME)
    model_dir = folder / model.name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(model.onnx_path.read_bytes())

    def tensors(
        described: Iterable[pb.ModelMetadataResponse.TensorMetadata],
    ) -> list[dict[str, object]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in described]

    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": model.name, "implementation": "peer_runtime.OnnxPeerModel",
        "parameters": {"uri": "./model.onnx"},
        "inputs": tensors(model.metadata.inputs), "outputs": tensors(model.metadata.outputs),
    }))


class MLServerProcess:
    """MLServer serving one model; a context manager like :class:`loadtests.procs.ServerProcess`
    (``target`` is ``HOST:PORT`` once entered)."""

    def __init__(self, python: str, model_dir: Path, *, start_timeout_s: float = 120.0) -> None:
        self.name = "mlserver"
        self._python = python
        self._model = PeerModel.load(model_dir)
        self._start_timeout_s = start_timeout_s
        self._folder = tempfile.TemporaryDirectory(prefix="sluice-mlserver-")
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        self._proc: subprocess.Popen[str] | None = None
        self.target = ""
        #: Its REST (KServe v2 HTTP) address, ``HOST:PORT``, once entered.
        self.http_target = ""

    def __enter__(self) -> MLServerProcess:
        port = _free_port()
        folder = Path(self._folder.name)
        write_folder(folder, self._model, port)
        http_port = json.loads((folder / "settings.json").read_text())["http_port"]
        self._proc = subprocess.Popen(
            [self._python, "-m", "mlserver.cli.main", "start", str(folder)], cwd=folder,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, text=True,
        )
        target = f"127.0.0.1:{port}"
        try:
            self._wait_ready(target)
        except BaseException:
            self.stop()
            raise
        self.target = target
        self.http_target = f"127.0.0.1:{http_port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self, target: str) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        with grpc.insecure_channel(target) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise RuntimeError(f"mlserver exited: {self.log_tail()}")
                try:
                    if (stub.ServerReady(pb.ServerReadyRequest(), timeout=1.0).ready
                            and stub.ModelReady(pb.ModelReadyRequest(name=self._model.name),
                                                timeout=1.0).ready):
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(0.2)
        raise RuntimeError(f"mlserver: not ready after {self._start_timeout_s}s: "
                           f"{self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read()[-chars:]

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; removes the folder."""
        if self._proc is not None:
            terminate(self._proc, grace_s)
        if not self._log.closed:
            self._log.close()
        self._folder.cleanup()
