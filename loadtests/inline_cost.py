"""What Sluice's own request path costs in CPU, in-process, with no transport (issue 11).

    python -m loadtests.inline_cost [--models identity,mlp,cnn28] [--count 20000] [--reps 5]
        [--rounds 3] [--clock thread|process] [--against CHECKOUT]

Throughput on a shared 2-core machine says more about the neighbours than about the server; CPU
time per request does not. For each model this builds the repository of :mod:`loadtests.peers`
(``identity``, the MLP 64->128->10 and the small CNN, one CPU instance, ``dynamic_batching``),
starts a :class:`sluice.server.app.Server` in a child process (no gRPC port is served to anyone:
the calls go straight to ``InferenceServicer.ModelInfer`` with a pre-serialized batch-1 request
parsed per call, as the generated handler would) and measures, per request:

- **sluice**: CPU time of one ``ModelInfer`` call, parse included, awaited one at a time (c=1:
  the model is always idle, so every request takes the inline path when the model is fast),
  parsed by ModelInfer's registered deserializer (the request-layout cache where the checkout
  has one: :mod:`sluice.server.protocol.request_layouts`);
- **model**: the same input through ``onnxruntime.InferenceSession.run`` called directly on a
  session of the same file with one intra-op thread (the model's own cost).

``sluice - model`` is what Sluice adds. ``--clock thread`` (default) counts the calling thread
only (the event loop's); ``--clock process`` counts every thread (monitors, instance threads).
Each figure is the best of ``--reps`` timed loops of ``--count`` calls after a warm-up (the
best filters preemption by other processes); a round runs each measured thing in its own child
process, interleaved, and the table shows the median over ``--rounds``.

``--against CHECKOUT`` also measures another checkout's Sluice (the path of a source tree with
its ``.ci/pythonpath`` link, e.g. ``git archive main | tar -x -C /tmp/base``), interleaved with
this one (A B A B), so a change's saving is read in one run. About 5 s per child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The batch-1 input each model gets: (input name, shape).
_INPUTS = {
    "identity": ("INPUT0", (1, 16)),
    "mlp": ("features", (1, 64)),
    "cnn28": ("image", (1, 1, 28, 28)),
}


def _child_env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(checkout / ".ci" / "pythonpath"), str(ROOT)]
    )
    return env


#: The child: one measurement, printed as JSON. A program string run with ``python -c`` (as in
#: :mod:`loadtests.prediction_log_bench`): load tests import no server module themselves.
_PROGRAM = r"""
import asyncio, json, sys, tempfile, time
from pathlib import Path
import numpy as np

what, model, repository = sys.argv[1], sys.argv[2], Path(sys.argv[3])
count, reps = int(sys.argv[4]), int(sys.argv[5])
name, shape = sys.argv[6], tuple(int(d) for d in sys.argv[7].split("x"))
clock = time.thread_time if sys.argv[8] == "thread" else time.process_time


def measure_model():
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), options,
        providers=["CPUExecutionProvider"])
    feed = {name: np.ones(shape, np.float32)}
    for _ in range(2000):
        session.run(None, feed)
    best = float("inf")
    for _ in range(reps):
        start = clock()
        for _ in range(count):
            session.run(None, feed)
        best = min(best, (clock() - start) / count)
    return best


class Context:  # what ModelInfer reads of a grpc.aio context on the success path
    def time_remaining(self):
        return None

    def invocation_metadata(self):
        return ()


async def measure_sluice():
    from sluice.proto import grpc_service_pb2 as pb
    from sluice.proto.tensors import make_input
    from sluice.server.app import Server
    from sluice.server.config.settings import ServerConfig

    with tempfile.TemporaryDirectory(prefix="inline-cost-") as state:
        config = ServerConfig(
            model_repository=repository, grpc_port=0, metrics_port=None,
            state_dir=Path(state), model_control="explicit", startup_models=(model,),
            log_level="WARNING")
        server = Server(config)
        await server.start(lambda: None)
        try:
            servicer = server.servicer
            tensor, raw = make_input(name, np.ones(shape, np.float32))
            data = pb.ModelInferRequest(
                model_name=model, inputs=[tensor], raw_input_contents=[raw]
            ).SerializeToString()
            # ModelInfer's registered deserializer (server/protocol/wire.py): the request-layout
            # cache where the checkout has one (issue 11), else protobuf's own parser.
            context = Context()
            parse = getattr(servicer, "layouts", pb.ModelInferRequest.FromString)

            async def loop(n):
                for _ in range(n):
                    await servicer.ModelInfer(parse(data), context)

            await loop(3000)
            best = float("inf")
            for _ in range(reps):
                start = clock()
                await loop(count)
                best = min(best, (clock() - start) / count)
            return best
        finally:
            await server.stop(1)


seconds = measure_model() if what == "model" else asyncio.run(measure_sluice())
print(json.dumps({"us": seconds * 1e6}))
"""


def _run_child(checkout: Path, what: str, model: str, repository: Path,
               args: argparse.Namespace) -> float:
    name, shape = _INPUTS[model]
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, what, model, str(repository), str(args.count),
         str(args.reps), name, "x".join(str(d) for d in shape), args.clock],
        cwd=ROOT, env=_child_env(checkout), capture_output=True, text=True, timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{what} on {model} ({checkout}) failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["us"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="identity,mlp,cnn28")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clock", choices=("thread", "process"), default="thread")
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout to measure side by side with this one")
    args = parser.parse_args(argv)

    from loadtests.peer_models import build_repository

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(_INPUTS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(_INPUTS)}")
    checkouts = {"sluice": ROOT}
    if args.against is not None:
        checkouts["against"] = args.against.resolve()
    with tempfile.TemporaryDirectory(prefix="inline-cost-repo-") as tmp:
        repository = build_repository(Path(tmp), models)
        figures: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for model in models:
                figures.setdefault((model, "model"), []).append(
                    _run_child(ROOT, "model", model, repository, args))
                for label, checkout in checkouts.items():
                    figures.setdefault((model, label), []).append(
                        _run_child(checkout, "sluice", model, repository, args))
    print(f"CPU us per batch-1 request ({args.clock} clock; median over {args.rounds} rounds "
          f"of best-of-{args.reps} x {args.count})")
    header = f"{'model':10s} {'model':>8s} " + " ".join(f"{k:>9s}" for k in checkouts)
    header += " " + " ".join(f"{k + '-model':>14s}" for k in checkouts)
    print(header)
    for model in models:
        med = {k: statistics.median(figures[(model, k)]) for k in ("model", *checkouts)}
        row = f"{model:10s} {med['model']:8.1f} " + " ".join(f"{med[k]:9.1f}" for k in checkouts)
        row += " " + " ".join(f"{med[k] - med['model']:14.1f}" for k in checkouts)
        print(row)
    if "against" in checkouts:
        for model in models:
            pairs = zip(figures[(model, "against")], figures[(model, "sluice")], strict=True)
            print(f"{model}: against -> this checkout per round: "
                  + ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in pairs))


if __name__ == "__main__":
    main()
