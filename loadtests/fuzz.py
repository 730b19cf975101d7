"""The nightly fuzzing campaign: ``python -m loadtests.fuzz --cases N [--seed S]``.

Starts ``sluice serve`` as a subprocess over a private copy of the bundled ``identity`` model
(the campaign may unload it or change its deployment, as any caller may), runs N cases from
:mod:`loadtests.fuzz_cases` (byte-level mutations of valid messages of every method, and
structure-aware Hypothesis cases; the share of each set by ``--structured``), then checks that
the process is alive and answers a known-good request exactly. Prints a JSON summary (cases,
statuses, failures, seed); exit status 1 on any failure, so a scheduler can alert on it. The CI
run (tests/integration/test_fuzz.py) is the same campaign at 10,000 cases.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from loadtests.fuzz_cases import Caller, Tally, byte_cases, seeds, structured_cases
from loadtests.models import ROOT
from loadtests.procs import ServerProcess
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.proto.tensors import decode_outputs, make_input

MODELS = ("identity",)


def _known_good(channel: grpc.Channel) -> str | None:
    """None when identity (reloaded) answers exactly, else what went wrong."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    tensor, raw = make_input("INPUT0", x)
    try:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="identity"),
                                 timeout=120)
        reply = stub.ModelInfer(pb.ModelInferRequest(
            model_name="identity", model_version="1", inputs=[tensor], raw_input_contents=[raw]),
            timeout=30)
    except grpc.RpcError as error:
        return f"known-good request: {error.code().name} {error.details()}"
    if not np.array_equal(decode_outputs(reply)["OUTPUT0"], x):
        return "known-good request: wrong answer"
    return None


def run(cases: int, structured: float, seed: int) -> dict:
    """The campaign; returns the summary."""
    work = Path(tempfile.mkdtemp(prefix="sluice-fuzz-"))
    try:
        shutil.copytree(ROOT / "model_repository" / "identity", work / "identity")
        args = ["-m", "sluice.server", "serve", "--model-repository", str(work),
                "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
                "--log-level", "ERROR"]
        tally = Tally()
        started = time.monotonic()
        with ServerProcess("sluice", args, start_timeout_s=300) as server, \
                grpc.insecure_channel(server.target) as channel:
            caller = Caller(channel, tally)
            n_structured = int(cases * structured)
            try:
                structured_cases(caller, MODELS, n_structured, seed)
            except AssertionError:
                pass  # the tally holds it (Hypothesis stopped at the first, shrunk)
            identity_input = np.ones((1, 16), np.float32).tobytes()
            for method, messages in byte_cases(seeds(MODELS, identity_input),
                                               cases - tally.cases, random.Random(seed)):
                caller.send(method, messages)
            problem = _known_good(channel)
            alive = server.exit_code is None and server._proc is not None and (
                server._proc.poll() is None)
        failures = list(tally.failures)
        if problem is not None:
            failures.append(problem)
        if not alive:
            failures.append("the server process exited during the campaign")
        return {"cases": tally.cases, "seed": seed, "seconds": round(time.monotonic() - started, 1),
                "statuses": dict(tally.statuses), "failures": failures[:50],
                "failure_count": len(failures)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases in all")
    parser.add_argument("--structured", type=float, default=0.2,
                        help="share of structure-aware (Hypothesis) cases, 0..1")
    parser.add_argument("--seed", type=int, default=None, help="reproduce a run")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    summary = run(args.cases, min(1.0, max(0.0, args.structured)), seed)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failure_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
