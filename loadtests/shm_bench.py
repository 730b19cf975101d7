"""System shared memory against raw tensors over gRPC, on ``cnn`` with 64 rows per request.

    python -m loadtests.shm_bench [--rows 64] [--concurrency 1,4] [--models cnn,cnn_io]
        [--duration S] [--repeats R] [--quick] [--out DIR]

Issue 16 item 4's benchmark. One ``sluice serve`` on loopback serving ``cnn`` as bundled and
``cnn_io``, written here: the same input and output tensors with no compute (each row's first
10 values), so what transport costs shows apart from the CNN's compute. One client process
(this one: grpc.aio, one channel) runs a closed loop of ``--concurrency`` workers, each with its
own pair of regions (made with ``tritonclient.utils.shared_memory``, as Triton's clients make
them). Every request carries fresh data both ways, as an application's would:

* raw: the input array serialized into ``raw_input_contents`` (``tobytes``), the output read
  from ``raw_output_contents``;
* shm: the input array copied into the worker's input region, the request naming it
  (``shared_memory_region``/``byte_size``), the output requested into the output region and
  copied out of it after the answer.

Each round measures both modes at each concurrency, the mode that goes first alternating per
round (the machine drifts). The first answer of each mode is checked against the other's for
the same input (they must agree). Reported per mode and concurrency: medians over rounds of
req/s, rows/s and p50 latency, and the median of the per-round ratios shm / raw of rows/s.
Writes ``shm_bench.json`` to ``--out`` (default ``loadtests/results/``, git-ignored). A default
run takes about a minute; ``--quick`` (2 s points, 2 rounds) is a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.utils.shared_memory as shm

from loadtests.models import MODEL_REPOSITORY, ROOT
from loadtests.procs import ServerProcess
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc

MODEL, INPUT, OUTPUT = "cnn", "image", "logits"
IMAGE_DIMS, CLASSES = (3, 32, 32), 10
_MODES = ("raw", "shm")


def _log(text: str) -> None:
    print(f"[shm_bench] {text}", flush=True)


def _server_args(repository: Path, models: list[str]) -> list[str]:
    return ["-m", "sluice.server", "serve", "--model-repository", str(repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
            "--model-control", "explicit", *(f"--load-model={m}" for m in models),
            "--log-level", "WARNING"]


def write_repository(root: Path) -> Path:
    """``root`` with the bundled cnn and cnn_io (cnn's tensors, no compute)."""
    from onnx import TensorProto, helper  # the loadtest extra's

    shutil.copytree(MODEL_REPOSITORY / MODEL, root / MODEL)
    graph = helper.make_graph(
        [helper.make_node("Flatten", [INPUT], ["flat"], axis=1),
         helper.make_node("Slice", ["flat", "starts", "ends", "axes"], [OUTPUT])],
        "cnn_io",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *IMAGE_DIMS])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", CLASSES])],
        [helper.make_tensor(name, TensorProto.INT64, [1], [value])
         for name, value in (("starts", 0), ("ends", CLASSES), ("axes", 1))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "cnn_io" / "1").mkdir(parents=True)
    (root / "cnn_io" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    config = (MODEL_REPOSITORY / MODEL / "config.pbtxt").read_text()
    (root / "cnn_io" / "config.pbtxt").write_text(config.replace(f'"{MODEL}"', '"cnn_io"', 1))
    return root


class Worker:
    """One closed-loop client with its own regions and its own input array."""

    def __init__(self, stub: Any, model: str, index: int, rows: int, seed: int) -> None:
        self.stub, self.model, self.rows = stub, model, rows
        self.x = np.random.default_rng(seed).standard_normal((rows, *IMAGE_DIMS), np.float32)
        self.in_bytes = self.x.nbytes
        self.out_bytes = rows * CLASSES * 4
        tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}_{index}"
        self.in_name, self.out_name = f"{model}_in_{index}", f"{model}_out_{index}"
        self.in_handle = shm.create_shared_memory_region(
            self.in_name, f"/sluice_bench_in_{tag}", self.in_bytes)
        self.out_handle = shm.create_shared_memory_region(
            self.out_name, f"/sluice_bench_out_{tag}", self.out_bytes)
        self.in_key, self.out_key = f"/sluice_bench_in_{tag}", f"/sluice_bench_out_{tag}"
        self._in_view = np.ndarray(self.x.shape, np.float32, self.in_handle._mpsm_handle.buf)
        self._out_view = np.ndarray((rows, CLASSES), np.float32, self.out_handle._mpsm_handle.buf)
        self.shm_request = self._request()
        tensor = self.shm_request.inputs[0]
        tensor.parameters["shared_memory_region"].string_param = self.in_name
        tensor.parameters["shared_memory_byte_size"].int64_param = self.in_bytes
        output = self.shm_request.outputs.add(name=OUTPUT)
        output.parameters["shared_memory_region"].string_param = self.out_name
        output.parameters["shared_memory_byte_size"].int64_param = self.out_bytes

    def _request(self) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=self.model)
        request.inputs.add(name=INPUT, datatype="FP32", shape=[self.rows, *IMAGE_DIMS])
        return request

    async def register(self) -> None:
        for name, key, size in ((self.in_name, self.in_key, self.in_bytes),
                                (self.out_name, self.out_key, self.out_bytes)):
            await self.stub.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(
                name=name, key=key, byte_size=size), timeout=30)

    async def raw(self) -> np.ndarray:
        request = self._request()
        request.raw_input_contents.append(self.x.tobytes())
        answer = await self.stub.ModelInfer(request, timeout=60)
        return np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(
            self.rows, CLASSES)

    async def shm(self) -> np.ndarray:
        np.copyto(self._in_view, self.x)
        await self.stub.ModelInfer(self.shm_request, timeout=60)
        return self._out_view.copy()

    def close(self) -> None:
        del self._in_view, self._out_view  # views of the mappings, before they close
        shm.destroy_shared_memory_region(self.in_handle)
        shm.destroy_shared_memory_region(self.out_handle)


async def _measure(workers: list[Worker], mode: str, duration_s: float, warmup_s: float
                   ) -> dict[str, float]:
    """Closed loop of ``workers`` in ``mode``: req/s, rows/s and latency quantiles (ms) over
    the ``duration_s`` after ``warmup_s``."""
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + duration_s)
    latencies: list[float] = []
    errors = 0

    async def loop(worker: Worker) -> None:
        nonlocal errors
        call = worker.raw if mode == "raw" else worker.shm
        while (began := time.perf_counter()) < window[1]:
            try:
                await call()
            except grpc.RpcError:
                errors += 1
                continue
            done = time.perf_counter()
            if window[0] <= done <= window[1]:  # answers inside the window count
                latencies.append(done - began)

    await asyncio.gather(*(loop(w) for w in workers))
    rows = workers[0].rows
    latencies.sort()
    count = len(latencies)
    return {"req_s": count / duration_s, "rows_s": count * rows / duration_s,
            "p50_ms": latencies[count // 2] * 1000 if count else float("nan"),
            "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000 if count else
            float("nan"), "requests": count, "errors": errors}


async def _bench(args: argparse.Namespace, target: str) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {}
    async with grpc.aio.insecure_channel(target, options=[
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        workers = {model: [Worker(stub, model, i, args.rows, seed=i)
                           for i in range(max(args.concurrency))] for model in args.models}
        agree = True
        try:
            for model, theirs in workers.items():
                for worker in theirs:
                    await worker.register()
                raw_answer, shm_answer = await theirs[0].raw(), await theirs[0].shm()
                same = bool(np.allclose(raw_answer, shm_answer, rtol=1e-5, atol=1e-5))
                _log(f"{model}: shm answer equals raw answer: {same}")
                agree = agree and same
            if not agree:
                raise SystemExit("shm and raw answers differ")
            for round_no in range(args.repeats):
                order = _MODES if round_no % 2 == 0 else _MODES[::-1]
                for model, concurrency in [(m, c) for m in args.models for c in args.concurrency]:
                    for mode in order:
                        point = await _measure(workers[model][:concurrency], mode,
                                               args.duration, args.warmup)
                        results.setdefault(f"{model} {mode} c={concurrency}", []).append(point)
                        _log(f"round {round_no + 1} {model} {mode} c={concurrency}: "
                             f"{point['req_s']:.1f} req/s, {point['rows_s']:.0f} rows/s, "
                             f"p50 {point['p50_ms']:.2f} ms, errors {point['errors']}")
        finally:
            for theirs in workers.values():
                for worker in theirs:
                    worker.close()
    return _summary(args, results, agree)


def _summary(args: argparse.Namespace, results: dict[str, list[dict[str, float]]],
             agree: bool) -> dict[str, Any]:
    table = {}
    for model, concurrency in [(m, c) for m in args.models for c in args.concurrency]:
        raw = results[f"{model} raw c={concurrency}"]
        shared = results[f"{model} shm c={concurrency}"]
        ratios = [s["rows_s"] / r["rows_s"] if r["rows_s"] else float("nan")
                  for r, s in zip(raw, shared, strict=True)]
        table[f"{model} c={concurrency}"] = {
            mode: {key: statistics.median(p[key] for p in points)
                   for key in ("req_s", "rows_s", "p50_ms", "p99_ms")}
            | {"errors": sum(int(p["errors"]) for p in points)}
            for mode, points in (("raw", raw), ("shm", shared))
        } | {"shm_over_raw_rows_s": {"rounds": ratios, "median": statistics.median(ratios)}}
    return {"settings": {k: v for k, v in vars(args).items() if k != "out"},
            "answers_agree": agree, "load_average": os.getloadavg(),
            "request_bytes": args.rows * int(np.prod(IMAGE_DIMS)) * 4,
            "table": table, "runs": results}


def print_report(payload: dict[str, Any]) -> None:
    print(f"\n{'':18}{'req/s':>9}{'rows/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for point, modes in payload["table"].items():
        for mode in _MODES:
            m = modes[mode]
            print(f"{point + ' ' + mode:18}{m['req_s']:>9.1f}{m['rows_s']:>10.0f}"
                  f"{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{m['errors']:>8}")
        ratio = modes["shm_over_raw_rows_s"]
        print(f"{'':18}shm / raw rows/s: {ratio['median']:.3f} "
              f"(rounds {[round(r, 3) for r in ratio['rounds']]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.shm_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="rows per request (64)")
    parser.add_argument("--concurrency", default="1,4",
                        help="comma-separated closed-loop concurrencies (1,4)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per point (6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each (1)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (3)")
    parser.add_argument("--models", default="cnn,cnn_io",
                        help="comma-separated: cnn and/or cnn_io (both)")
    parser.add_argument("--quick", action="store_true", help="2 s points, 2 rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.models = [m for m in str(args.models).split(",") if m]
    if not set(args.models) <= {MODEL, "cnn_io"}:
        parser.error("--models takes cnn and cnn_io")
    if args.quick:
        args.duration, args.warmup, args.repeats = 2.0, 0.5, 2
    began = time.monotonic()
    with (tempfile.TemporaryDirectory(prefix="sluice-shm-bench-") as tmp,
          ServerProcess("sluice", _server_args(write_repository(Path(tmp)), args.models),
                        start_timeout_s=180) as server):
        _log(f"sluice on {server.target}, {', '.join(args.models)} with {args.rows} rows per "
             f"request ({args.rows * int(np.prod(IMAGE_DIMS)) * 4} input bytes)")
        payload = asyncio.run(_bench(args, server.target))
    payload["elapsed_s"] = time.monotonic() - began
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shm_bench.json").write_text(json.dumps(payload, indent=2, default=str))
    print_report(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
