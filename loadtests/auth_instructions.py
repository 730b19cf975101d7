"""What TLS and tokens cost per call in instructions, not microseconds: a figure noise cannot move.

    python -m loadtests.auth_instructions [--servers plain,tls,...] [--clients bare,...]
        [--calls N] [--out DIR]

On a shared machine (the 2-core development box runs load average 5-10) the c=1 latency and
even the CPU time of one call move by more than the 100 us issue 14 allows TLS and tokens to
add (:mod:`loadtests.auth_latency`). Instructions retired do not: this counts them with
valgrind's callgrind (``--cache-sim=no``), which runs the measured process on a synthetic CPU,
so other processes change its speed but not its count (two runs of one case agree within ~1%).

* Server side (``--servers``, of :data:`loadtests.auth_latency.SERVERS`): each server runs
  under callgrind, one after another; a native client (a bare grpc.aio channel, the token as
  per-call metadata where the server wants one) makes 50 calls, zeroes the server's counters
  (``callgrind_control -z``), makes ``--calls`` sequential ModelInfer calls on ``identity`` and
  dumps them (``callgrind_control -d``): the server's instructions per call, all its threads.
* Client side (``--clients``, of :data:`loadtests.auth_latency.CLIENTS`): the client process
  runs under callgrind and counts itself the same way, against native ceiling and ceiling_tls
  servers (the token sent to both): the client's instructions per call.

Under callgrind a Sluice server takes ~5 minutes to start (ONNX Runtime loads on the synthetic
CPU); a default run (4 Sluice servers, 2 ceilings, 4 clients x 2 targets) takes 30-40 minutes.
valgrind must be installed. Writes ``auth_instructions.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests.auth_latency import CLIENTS, SERVERS, _client_pair, server_specs
from loadtests.models import ROOT
from loadtests.procs import ServerProcess, checkout_env
from sluice.clients.auth import bearer_metadata
from sluice.clients.messages import build_request, channel_options
from sluice.clients.tls import open_aio_channel, tls_credentials

_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_WARMUP_CALLS = 50


def _callgrind(out_file: Path) -> tuple[str, ...]:
    return ("valgrind", "--tool=callgrind", "--cache-sim=no", f"--callgrind-out-file={out_file}")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=600)


def dumped_instructions(out_file: Path) -> int:
    """The instruction count of the last ``callgrind_control -d`` dump of ``out_file`` (dumps
    are written as ``out_file.1``, ``.2``, ...; each holds what ran since the one before)."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"),
                   key=lambda path: int(path.suffix[1:]))
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{dumps[-1]}: no summary line")


def _payload() -> bytes:
    return build_request("identity", {"INPUT0": np.ones((1, 16), np.float32)}).SerializeToString()


async def _drive(proc: ServerProcess, calls: int) -> None:
    """Warm up, zero the server's counters, make ``calls`` calls, dump."""
    channel = open_aio_channel(proc.target, channel_options(None), proc.credentials)
    method = channel.unary_unary(_METHOD)
    payload = _payload()
    metadata = bearer_metadata(proc.token) if proc.token else None
    try:
        for _ in range(_WARMUP_CALLS):
            await method(payload, timeout=120.0, metadata=metadata)
        _control("-z", str(proc.pid))
        for _ in range(calls):
            await method(payload, timeout=120.0, metadata=metadata)
        _control("-d", "measured", str(proc.pid))
    finally:
        await channel.close()


def _server_side(specs: dict[str, Any], names: list[str], calls: int, tmp: Path
                 ) -> dict[str, float]:
    found: dict[str, float] = {}
    for name in names:
        argv, credentials, token = specs[name]
        out = tmp / f"server-{name}.cg"
        with ServerProcess(name, argv, credentials=credentials, token=token,
                           wrapper=_callgrind(out), start_timeout_s=1200.0) as proc:
            asyncio.run(_drive(proc, calls))
        found[name] = dumped_instructions(out) / calls
        _log(f"server {name}: {found[name] / 1e3:.1f}k instructions a call")
    return found


async def _count_self(kind: str, target: str, ca: str | None, token: str, calls: int) -> None:
    """Run in the client process under callgrind: ``kind``'s calls, counted by itself."""
    endpoint = Endpoint(target, tls_credentials(ca) if ca else None, token or None)
    request = build_request("identity", {"INPUT0": np.ones((1, 16), np.float32)})
    pair = _client_pair("target", kind, endpoint, request)
    try:
        for _ in range(_WARMUP_CALLS):
            await pair.call()
        _control("-z", str(os.getpid()))
        for _ in range(calls):
            await pair.call()
        _control("-d", "measured", str(os.getpid()))
    finally:
        await pair.close()


@dataclass(frozen=True)
class Endpoint:
    """How the counted client reaches its server (what it needs of a ServerProcess)."""

    target: str
    credentials: grpc.ChannelCredentials | None
    token: str | None
    pid: int = 0


def _client_side(specs: dict[str, Any], kinds: list[str], calls: int, ca: Path, tmp: Path
                 ) -> dict[str, float]:
    found: dict[str, float] = {}
    for target_name in ("ceiling", "ceiling_tls"):
        argv, credentials, token = specs[target_name]
        with ServerProcess(target_name, argv, credentials=credentials, token=token) as proc:
            for kind in kinds:
                out = tmp / f"client-{target_name}-{kind}.cg"
                command = [*_callgrind(out), sys.executable, "-m", "loadtests.auth_instructions",
                           "--count-self", kind, proc.target, "--calls", str(calls),
                           "--token", token or ""]
                if credentials is not None:
                    command += ["--ca", str(ca)]
                subprocess.run(command, cwd=ROOT, env=checkout_env(), check=True,
                               capture_output=True, timeout=3600)
                key = f"{target_name}/{kind}"
                found[key] = dumped_instructions(out) / calls
                _log(f"client {key}: {found[key] / 1e3:.1f}k instructions a call")
    return found


def _log(text: str) -> None:
    print(f"[auth_instructions] {text}", flush=True)


def _rises(table: dict[str, float], base_of: dict[str, str]) -> dict[str, float]:
    return {name: table[name] - table[base] for name, base in base_of.items()
            if name in table and base in table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.auth_instructions",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--calls", type=int, default=300, help="counted calls (300)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    parser.add_argument("--count-self", nargs=2, metavar=("KIND", "TARGET"),
                        help=argparse.SUPPRESS)  # the client process, under callgrind
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count_self:
        kind, target = args.count_self
        asyncio.run(_count_self(kind, target, args.ca, args.token or "", args.calls))
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed")
    servers = [s for s in args.servers.split(",") if s]
    kinds = [c for c in args.clients.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="sluice-auth-instructions-") as tmp:
        specs, ca = server_specs(Path(tmp))
        server = _server_side(specs, servers, args.calls, Path(tmp))
        client = _client_side(specs, kinds, args.calls, ca, Path(tmp)) if kinds else {}
    payload = {
        "calls": args.calls,
        "server_instructions_per_call": server,
        "server_rise_over_plain": _rises(server, {"tls": "plain", "tokens": "plain",
                                                  "tls_tokens": "plain",
                                                  "ceiling_tls": "ceiling"}),
        "client_instructions_per_call": client,
        "client_tls_rise": _rises(client, {f"ceiling_tls/{k}": f"ceiling/{k}" for k in kinds}),
        "client_interceptor_rise": _rises(client, {
            f"{t}/{kind}_interceptor": f"{t}/{kind}"
            for t in ("ceiling", "ceiling_tls") for kind in ("bare", "client")}),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auth_instructions.json").write_text(json.dumps(payload, indent=2))
    print(json.dumps({k: v for k, v in payload.items() if k != "calls"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
