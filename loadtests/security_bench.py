"""What transport security (and token checks) cost: identity at c=64 and c=1, secure vs plain.

    python -m loadtests.security_bench [--duration S] [--repeats R] [--mtls] [--tokens]
        [--tls-cert FILE --tls-key FILE --tls-ca FILE]
        [--token TOKEN --secure-server-arg=--tokens=FILE ...] [--out DIR]

Issue 14's performance section: with TLS and token checks on, throughput at concurrency 64 on
``identity`` must stay at least 85% of plaintext without auth, and the c=1 p50 may rise by at
most 100 us. Both servers (``sluice serve``, identity only, one process each) run side by side
for the whole run:

* plain: no TLS, no server flags beyond the defaults;
* secure: ``--tls-cert/--tls-key`` (a throwaway CA and certificate made with
  tests/support/certs.py unless given), ``--tls-client-ca`` with ``--mtls`` (the generators then
  present a client certificate), ``--tokens FILE`` with ``--tokens`` (a tokens file made here by
  ``sluice token create`` with scopes infer and metadata; the generators send its token), and
  every ``--secure-server-arg``; a ``--token`` given is sent as ``authorization: Bearer TOKEN``
  (for a tokens file of your own: ``--secure-server-arg=--tokens=FILE --token T``).

The issue's comparison is ``--tokens`` (TLS and token checks) against plaintext without auth.

Each round measures c=64 and c=1 on both, the side that goes first alternating per round (the
machine drifts), with :mod:`loadtests.loadgen` (closed loop, unary, batch 1, one process, one
channel: one TLS connection, so the handshake is paid once and what is measured is record
encryption per message). Reported: per side the median over rounds of req/s and p50, and the
median of the per-round ratios (c=64 throughput, secure / plain) and differences (c=1 p50,
secure - plain, in us), each against the issue's target. Writes ``security_bench.json`` to
``--out`` (default ``loadtests/results/``, git-ignored). A default run takes about two minutes;
``--quick`` (2 s points, 2 rounds, 500 pairs) is a smoke test.

The c=1 rounds swing by hundreds of microseconds on the shared machine (one run: -92 to +661 us
for one change), more than the 100 us the target allows; after them, ``--pairs`` calls per side
at c=1 alternate between the two servers from one client (:mod:`loadtests.paired`), so both
sides see the same noise, and the p50 rise is read from that too (reported with its spread over
blocks of 500 pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests import paired
from loadtests.models import MODEL_REPOSITORY, ROOT, load_spec, make_inputs
from loadtests.procs import LoadResult, ServerProcess, checkout_env, run_load
from sluice.clients.tls import tls_credentials

#: The issue's targets: c=64 throughput ratio at least, c=1 p50 increase at most.
MIN_RATIO_C64 = 0.85
MAX_P50_RISE_US = 100.0
_SIDES = ("plain", "secure")


def _server_args(extra: list[str]) -> list[str]:
    return ["-m", "sluice.server", "serve", "--model-repository", str(MODEL_REPOSITORY),
            "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1",
            "--model-control", "explicit", "--load-model", "identity",
            "--log-level", "WARNING", *extra]


def _certificates(args: argparse.Namespace, directory: Path) -> dict[str, str | None]:
    """The server's and (with --mtls) the client's files: given, or made here."""
    if args.tls_cert:
        return {"cert": args.tls_cert, "key": args.tls_key, "ca": args.tls_ca,
                "client_cert": args.client_cert, "client_key": args.client_key}
    from tests.support.certs import CertificateAuthority  # the test extra's cryptography

    ca = CertificateAuthority.create(directory)
    server, client = ca.issue("server"), ca.issue("bench", client=True)
    return {"cert": str(server.cert), "key": str(server.key), "ca": str(ca.cert),
            "client_cert": str(client.cert), "client_key": str(client.key)}


def _make_token(directory: Path) -> str:
    """A token with scopes infer and metadata in ``directory/tokens.json`` (sluice token
    create, as an operator makes one); returns the token it printed."""
    made = subprocess.run(
        [sys.executable, "-m", "sluice.server", "token", "create", "bench", "--scopes",
         "infer,metadata", "--tokens", str(directory / "tokens.json")],
        cwd=ROOT, env=checkout_env(), capture_output=True, text=True, timeout=120, check=True)
    return made.stdout.splitlines()[0].strip()


def _log(text: str) -> None:
    print(f"[security_bench] {text}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = load_spec("identity")
    duration, warmup = args.duration, args.warmup
    results: dict[tuple[str, int], list[LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-security-bench-") as tmp:
        pem = _certificates(args, Path(tmp))
        secure_flags = ["--tls-cert", str(pem["cert"]), "--tls-key", str(pem["key"])]
        client_args = ["--tls-ca", str(pem["ca"])]
        if args.mtls:
            secure_flags += ["--tls-client-ca", str(pem["ca"])]
            client_args += ["--tls-cert", str(pem["client_cert"]),
                            "--tls-key", str(pem["client_key"])]
        token = _make_token(Path(tmp)) if args.tokens else args.token
        if args.tokens:
            secure_flags += ["--tokens", str(Path(tmp) / "tokens.json")]
        if token:
            client_args += ["--token", token]
        client_pem = (pem["client_cert"], pem["client_key"]) if args.mtls else (None, None)
        credentials = tls_credentials(pem["ca"], *client_pem)
        with (
            ServerProcess("plain", _server_args([])) as plain,
            ServerProcess("secure", _server_args([*secure_flags, *args.secure_server_arg]),
                          credentials=credentials, token=token) as secure,
        ):
            servers = {"plain": (plain, ()), "secure": (secure, tuple(client_args))}
            _log(f"plain on {plain.target}, secure on {secure.target} "
                 f"({'mTLS' if args.mtls else 'TLS'}{' + token' if token else ''})")
            paired_result = None
            for round_no in range(args.repeats):
                order = _SIDES if round_no % 2 == 0 else _SIDES[::-1]
                for concurrency in (64, 1):
                    for side in order:
                        server, extra = servers[side]
                        result = run_load(
                            label=side, target=server.target, model="identity",
                            inputs=spec.inputs, batch=1, concurrency=concurrency,
                            duration_s=duration, warmup_s=warmup, client_args=extra)
                        results.setdefault((side, concurrency), []).append(result)
                        _log(f"round {round_no + 1} {side} c={concurrency}: "
                             f"{result.req_s:.0f} req/s, p50 {result.p50_ms * 1000:.0f} us, "
                             f"errors {result.errors} {result.first_error}")
            if args.pairs:
                _log(f"c=1 paired: {args.pairs} calls per side, alternated")
                paired_result = paired.measure(
                    {"plain": paired.Side(plain.target),
                     "secure": paired.Side(secure.target, credentials, token)},
                    "identity", make_inputs(spec.inputs, 1, 0), pairs=args.pairs)
    return _summary(args, results, paired_result)


def _summary(args: argparse.Namespace, results: dict[tuple[str, int], list[LoadResult]],
             paired_result: dict[str, Any] | None) -> dict[str, Any]:
    def median(side: str, c: int, key: str) -> float:
        return statistics.median(getattr(r, key) for r in results[side, c])

    ratios = [s.req_s / p.req_s if p.req_s else float("nan")
              for p, s in zip(results["plain", 64], results["secure", 64], strict=True)]
    rises = [(s.p50_ms - p.p50_ms) * 1000
             for p, s in zip(results["plain", 1], results["secure", 1], strict=True)]
    ratio, rise = statistics.median(ratios), statistics.median(rises)
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("token", "out")}
        | {"token": bool(args.token)},
        "load_average": os.getloadavg(),
        "sides": {
            side: {f"c{c}": {"req_s": median(side, c, "req_s"),
                             "p50_us": median(side, c, "p50_ms") * 1000,
                             "p99_us": median(side, c, "p99_ms") * 1000,
                             "errors": sum(r.errors for r in results[side, c])}
                   for c in (64, 1)}
            for side in _SIDES
        },
        "c64_throughput_ratio": {"rounds": ratios, "median": ratio, "target_min": MIN_RATIO_C64,
                                 "met": ratio >= MIN_RATIO_C64},
        "c1_p50_rise_us": {"rounds": rises, "median": rise, "target_max": MAX_P50_RISE_US,
                           "met": rise <= MAX_P50_RISE_US},
        "c1_paired": paired_result and paired_result | {
            "met": paired_result["secure_minus_plain_p50_us"]["all"] <= MAX_P50_RISE_US},
        "runs": {f"{side} c={c}": [asdict(r) for r in runs]
                 for (side, c), runs in results.items()},
    }


def print_report(payload: dict[str, Any]) -> None:
    sides = payload["sides"]
    print(f"\n{'':8}{'c=64 req/s':>12}{'c=64 p50 us':>13}{'c=1 req/s':>11}{'c=1 p50 us':>12}"
          f"{'errors':>8}")
    for side in _SIDES:
        s = sides[side]
        print(f"{side:8}{s['c64']['req_s']:>12.0f}{s['c64']['p50_us']:>13.0f}"
              f"{s['c1']['req_s']:>11.0f}{s['c1']['p50_us']:>12.0f}"
              f"{s['c64']['errors'] + s['c1']['errors']:>8}")
    ratio, rise = payload["c64_throughput_ratio"], payload["c1_p50_rise_us"]
    ratios = [round(r, 3) for r in ratio["rounds"]]
    rises = [round(r) for r in rise["rounds"]]
    print(f"c=64 throughput secure/plain: {ratio['median']:.3f} (target >= {MIN_RATIO_C64}: "
          f"{'met' if ratio['met'] else 'NOT met'}; rounds {ratios})")
    print(f"c=1 p50 secure - plain: {rise['median']:+.0f} us (target <= +{MAX_P50_RISE_US:.0f} "
          f"us: {'met' if rise['met'] else 'NOT met'}; rounds {rises})")
    found = payload["c1_paired"]
    if found:
        sides, rise = found["sides"], found["secure_minus_plain_p50_us"]
        print(f"c=1 paired ({found['pairs']} calls per side, alternated): p50 plain "
              f"{sides['plain']['p50_us']:.0f} us, secure {sides['secure']['p50_us']:.0f} us, "
              f"rise {rise['all']:+.0f} us (target <= +{MAX_P50_RISE_US:.0f} us: "
              f"{'met' if found['met'] else 'NOT met'}; per block of 500 pairs "
              f"{[round(b) for b in rise['blocks']]})")

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.security_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each (1)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (3)")
    parser.add_argument("--quick", action="store_true", help="2 s points, 2 rounds")
    parser.add_argument("--pairs", type=int, default=4000,
                        help="c=1 calls per side alternated between the servers (4000; 0: none)")
    parser.add_argument("--mtls", action="store_true",
                        help="the secure server asks for client certificates")
    parser.add_argument("--tls-cert", help="server certificate (default: one made here)")
    parser.add_argument("--tls-key", help="its key")
    parser.add_argument("--tls-ca", help="the CA clients check it against")
    parser.add_argument("--client-cert", help="client certificate for --mtls with given files")
    parser.add_argument("--client-key", help="its key")
    parser.add_argument("--tokens", action="store_true",
                        help="token checks on the secure side: a tokens file and token made here")
    parser.add_argument("--token", help="bearer token the generators send to the secure server")
    parser.add_argument("--secure-server-arg", action="append", default=[], metavar="ARG",
                        help="an extra flag for the secure server only, e.g. "
                        "--secure-server-arg=--tokens=tokens.json (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeats, args.pairs = 2.0, 0.5, 2, min(args.pairs, 500)
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_cert and not args.tls_ca):
        parser.error("--tls-cert, --tls-key and --tls-ca go together")
    if args.mtls and args.tls_cert and not (args.client_cert and args.client_key):
        parser.error("--mtls with given files needs --client-cert and --client-key")
    began = time.monotonic()
    payload = run(args)
    payload["elapsed_s"] = time.monotonic() - began
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "security_bench.json").write_text(json.dumps(payload, indent=2, default=str))
    print_report(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
