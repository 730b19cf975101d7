"""The ``sluice`` command line: parse arguments -> config -> run. Nothing else lives here.

    sluice serve [--model-repository DIR] [--host H] [--grpc-port P] [--metrics-port P]
                 [--workers N] [--state-dir DIR]
                 [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--insecure]
    sluice infer MODEL [--input NAME=FILE.npy|JSON ...] [--batch N]
    sluice stats [MODEL]
    sluice deploy MODEL status | routes ARM=WEIGHT ... | alias NAME=VERSION | switch TARGET
                        | rollback | shadow start VERSION [--sample F] | shadow stop [VERSION]
                        | canary start VERSION [--steps 5,25,50,100] [--interval S] [gates]
                        | canary abort
    sluice shadow report MODEL [--json]
    sluice repo index [--ready] [--json] | load MODEL | unload MODEL
    sluice feedback MODEL --file labels.csv|labels.parquet [--json]
    sluice quality MODEL [--json]
    sluice profile MODEL --data FILE [--version V] | drift MODEL [--json]
    sluice logging MODEL [--sample F] [--inputs | --no-inputs] [--exclude A,B] [--json]
    sluice retrain MODEL [--json] | retrain-webhook [--port P]
    sluice token create NAME --scopes S,S --tokens FILE | list | revoke NAME | cert CN
    sluice batch MODEL --input FILE --output FILE [--key COL] [--map INPUT=COLUMN ...] [--url]
    (client commands take --token, else $SLUICE_TOKEN, for a server with --tokens)

Every client command also takes --url HOST:PORT and, for a server with TLS, --tls-ca FILE (and
--tls-cert FILE --tls-key FILE when it asks for a client certificate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sluice.server import __version__
from sluice.server.cli_admin import add_admin_commands, run_admin
from sluice.server.cli_batch import add_batch_command, run_batch  # batch prediction (issue 17)
from sluice.server.cli_connect import (  # transport security (issue 14)
    DEFAULT_TARGET,
    ConnectionFlagError,
    add_connection_flags,
    connection,
)
from sluice.server.cli_cost import non_negative_price, print_cost
from sluice.server.cli_drift import add_drift_commands, run_drift, run_profile
from sluice.server.cli_fleet import add_fleet_flags, fleet_settings  # fleet (issue 15)
from sluice.server.cli_health import add_health_command, run_health  # images (issue 15)
from sluice.server.cli_logging import add_logging_command, run_logging
from sluice.server.cli_quality import add_quality_commands, run_quality  # feedback + quality
from sluice.server.cli_repo import add_repo_command, run_repo
from sluice.server.cli_retrain import add_retrain_commands, run_retrain  # retraining
from sluice.server.cli_token import add_token_command, run_token  # authz
from sluice.server.config.settings import ServerConfig
from sluice.server.config.tls import TlsFiles


def default_url(environ: Mapping[str, str]) -> str:
    """The server a command calls when no ``--url`` is given: $SLUICE_URL, else the default."""
    return environ.get("SLUICE_URL") or DEFAULT_TARGET


def _parser(url: str = DEFAULT_TARGET) -> argparse.ArgumentParser:
    from sluice.server.app import BUNDLED_REPOSITORY

    parser = argparse.ArgumentParser(
        prog="sluice",
        description="Sluice: a KServe v2 / Triton-compatible gRPC inference server.",
    )
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    add_connection_flags(parser, top_level=True)
    parser.set_defaults(url=url)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="serve a model repository",
        description="Serve every model in a Triton-layout model repository over gRPC "
        "(KServe v2 / Triton protocol) with Prometheus metrics over HTTP.",
    )
    serve.add_argument("--model-repository", type=Path, default=BUNDLED_REPOSITORY,
                       metavar="DIR", help="model repository (default: the bundled examples)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, default=8001,
                       help="gRPC port; 0 picks a free one and prints it (default 8001)")
    serve.add_argument("--http-port", type=int, default=None,  # REST (issue 17 item 1)
                       help="KServe v2 REST port; 0 picks a free one, -1 disables it (default "
                       "8000, or none with a warning when 8000 is taken)")
    serve.add_argument("--metrics-port", type=int, default=8002,
                       help="Prometheus /metrics port; -1 disables it (default 8002)")
    serve.add_argument("--model-control", choices=("none", "explicit"), default="none",
                       help="none: load the whole repository at start; explicit: load only "
                       "--load-model models and what RepositoryModelLoad asks for")
    serve.add_argument("--load-model", action="append", default=[], metavar="MODEL",
                       help="model to load at start with --model-control explicit (repeatable)")
    serve.add_argument("--shutdown-grace", type=float, default=10.0, metavar="SECONDS",
                       help="time in-flight requests get to finish on SIGTERM (default 10)")
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                       help="any case (default INFO)")
    serve.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                       help="server processes sharing the gRPC port (SO_REUSEPORT), each with "
                       "its own models and batchers, under a supervisor that restarts them and "
                       "merges their /metrics (default 1: one process, no supervisor)")
    serve.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                       help="deployment state and audit log (default: "
                       "<model repository>/.sluice-state)")
    add_fleet_flags(serve)  # fleet state in etcd (issue 15)
    # prediction log
    serve.add_argument("--prediction-log-dir", type=Path, default=None, metavar="DIR",
                       help="where the prediction log writes Parquet files (default: "
                       "<state dir>/predictions)")
    # Set by the supervisor on the command lines of its workers.
    serve.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    # feedback + quality: the live quality windows
    serve.add_argument("--quality-window-rows", type=_positive_int, default=10_000, metavar="N",
                       help="predicted rows each version and arm's live quality window keeps "
                       "(default 10000)")
    serve.add_argument("--quality-window-s", type=float, default=3600.0, metavar="SECONDS",
                       help="seconds a prediction stays in the live quality window; 0: no time "
                       "bound (default 3600)")
    # -- drift (issue 13 item 6)
    serve.add_argument("--drift-top-features", type=int, default=20, metavar="N",
                       help="features per model version on the per-feature drift gauges, most "
                       "drifted first; 0: all (default 20; per-bin counters cover all)")
    serve.add_argument("--drift-interval", type=float, default=10.0, metavar="SECONDS",
                       help="seconds between two computes of the drift windows (default 10)")
    # cost per prediction (issue 13 item 7)
    serve.add_argument("--price-per-core-hour", type=non_negative_price, default=None,
                       metavar="PRICE", help="price of one CPU core-hour in your currency: "
                       "cost per 1,000 predictions in /metrics and `sluice stats`")
    # authz (issue 14 items 2-3)
    serve.add_argument("--tokens", type=Path, default=None, metavar="FILE",
                       help="require a bearer token (or a mapped mTLS certificate) with the "
                       "right scope on every call and on /metrics; FILE from `sluice token "
                       "create` (default: none, every call open: bind loopback only)")
    # transport security (issue 14 item 1)
    serve.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                       help="PEM certificate chain: TLS on the gRPC port and /metrics (with "
                       "--tls-key; both re-read on SIGHUP, open connections kept)")
    serve.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                       help="PEM private key of --tls-cert (unencrypted)")
    serve.add_argument("--tls-client-ca", type=Path, default=None, metavar="FILE",
                       help="PEM CA certificates: clients must present a certificate one of "
                       "them signed (mTLS), or are refused at the handshake")
    serve.add_argument("--max-load-file-bytes", type=_positive_int, default=256 << 20,  # issue 16
                       metavar="N", help="most bytes of model files one load request may carry")
    serve.add_argument("--insecure", action="store_true",
                       help="allow plaintext on a --host other than loopback (logged as a "
                       "warning); without TLS only 127.0.0.1 and ::1 are served otherwise")

    infer = sub.add_parser(
        "infer", help="send one request to a running server and print the outputs",
        description="Send random inputs (or the given ones) to MODEL and print its outputs.",
    )
    infer.add_argument("model")
    _add_url(infer)
    infer.add_argument("--version", default="", help="model version (default: latest)")
    infer.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                       help="an input as NAME=file.npy or NAME=<JSON array> (repeatable); "
                       "give every input, or none for random ones")
    infer.add_argument("--batch", type=int, default=1, help="rows of random input (default 1)")
    infer.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")

    stats = sub.add_parser(
        "stats", help="print p50/p95/p99 latency and counts of a running server",
        description="Print end-to-end, queue and compute latency quantiles over the server's "
        "sliding window, and request counts, per model version.",
    )
    stats.add_argument("model", nargs="?", default="", help="one model (default: all)")
    _add_url(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_admin_commands(sub, _add_url)
    add_repo_command(sub, _add_url)
    add_quality_commands(sub, _add_url)  # feedback + quality
    add_drift_commands(sub, _add_url, BUNDLED_REPOSITORY)  # drift (issue 13 item 6)
    add_logging_command(sub, _add_url)  # prediction log
    add_retrain_commands(sub, _add_url, BUNDLED_REPOSITORY)  # retraining (issue 13, item 9)
    add_token_command(sub)  # authz
    add_health_command(sub, _add_url)  # images (issue 15, item 3): the HEALTHCHECK's probe
    add_batch_command(sub, _add_url, BUNDLED_REPOSITORY)  # batch prediction (issue 17)
    return parser


def _add_url(parser: argparse.ArgumentParser) -> None:
    """``--url`` and the client TLS flags at this level too: they may stand anywhere on the
    command line (:mod:`sluice.server.cli_connect`)."""
    add_connection_flags(parser)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(default_url(os.environ)).parse_args(argv)
    try:  # transport security: a TLS flag that cannot be used is a usage error, before any call
        _server_tls(args) if args.command == "serve" else connection(args)
    except (ConnectionFlagError, ValueError) as exc:
        print(f"sluice {args.command}: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve" and args.workers > 1 and args.worker_id is None:
        return _supervise(args, argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "infer":
        return _infer(args)
    if args.command in ("deploy", "shadow"):
        return run_admin(args)
    if args.command == "repo":
        return run_repo(args)
    if args.command in ("feedback", "quality"):
        return run_quality(args)
    if args.command in ("profile", "drift"):  # drift (issue 13 item 6)
        return run_profile(args) if args.command == "profile" else run_drift(args)
    if args.command == "logging":
        return run_logging(args)
    if args.command in ("retrain", "retrain-webhook"):  # retraining
        return run_retrain(args)
    if args.command == "token":  # authz
        return run_token(args)
    if args.command == "health":  # images (issue 15, item 3)
        return run_health(args)
    if args.command == "batch":  # batch prediction (issue 17)
        return run_batch(args)
    return _stats(args)


def _server_tls(args: argparse.Namespace) -> TlsFiles | None:
    """``serve``'s certificate files, or None; ValueError names a flag given without its pair."""
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS with "
                             "client certificates)")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together (the server's certificate and "
                         "its key)")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def _serve(args: argparse.Namespace) -> int:
    from sluice.server.app import StartError
    from sluice.server.process import run_until_signal
    from sluice.server.workers.supervisor import SCRAPE_SECRET_ENV

    worker = args.worker_id
    who = "" if worker is None else f"worker {worker} "
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"
    )
    config = ServerConfig(
        model_repository=args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        model_control=args.model_control,
        startup_models=tuple(args.load_model),
        shutdown_grace_s=args.shutdown_grace,
        log_level=args.log_level,
        # A worker shares the port with its siblings and serves /metrics to its supervisor only.
        reuse_port=worker is not None,
        metrics_host=None if worker is None else "127.0.0.1",
        worker_id=worker,
        state_dir=args.state_dir,
        quality_window_rows=args.quality_window_rows,  # feedback + quality
        quality_window_s=args.quality_window_s or None,
        drift_top_features=args.drift_top_features or None,
        drift_interval_s=args.drift_interval,
        price_per_core_hour=args.price_per_core_hour,
        prediction_log_dir=args.prediction_log_dir,
        tokens_file=args.tokens,  # authz
        metrics_scrape_secret=os.environ.pop(SCRAPE_SECRET_ENV, None) if worker is not None
        else None,
        tls=_server_tls(args),  # transport security
        insecure=args.insecure,
        max_load_file_bytes=args.max_load_file_bytes,  # load-time overrides (issue 16)
        **fleet_settings(args),  # fleet state in etcd (issue 15)
        # REST (issue 17 item 1): the default 8000 is best effort, an explicit port required
        http_port=8000 if args.http_port is None else (None if args.http_port < 0
                                                        else args.http_port),
        http_port_required=args.http_port is not None,
    )
    try:
        asyncio.run(run_until_signal(config))
    except StartError as exc:
        print(f"sluice serve: {exc}", file=sys.stderr)
        return 2 if exc.usage else 1
    return 0


def _supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """``serve --workers N``: run N ``serve`` processes under
    :mod:`sluice.server.workers.supervisor`."""
    from sluice.server.auth.tokens import TokenFileError
    from sluice.server.cli_token import supervisor_access
    from sluice.server.workers.supervisor import Supervisor, SupervisorConfig

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s supervisor %(name)s: %(message)s"
    )
    metrics_on = args.metrics_port >= 0
    try:  # authz: the merged /metrics needs the ops scope too, and workers guard theirs
        check, secret = supervisor_access(args.tokens)
    except (TokenFileError, OSError) as exc:
        print(f"sluice serve: --tokens {args.tokens}: {exc}", file=sys.stderr)
        return 2

    def worker_argv(worker: int, grpc_port: int) -> list[str]:
        # Our own command line with the overrides last (the last value of a flag wins), so
        # every serve flag, present or future, reaches the workers unchanged.
        return [sys.executable, "-m", "sluice.server", *argv, "--grpc-port", str(grpc_port),
                "--metrics-port", "0" if metrics_on else "-1", "--workers", "1",
                "--worker-id", str(worker)]

    supervisor = Supervisor(SupervisorConfig(
        workers=args.workers,
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port if metrics_on else None,
        worker_argv=worker_argv,
        shutdown_grace_s=args.shutdown_grace,
        metrics_check=check, scrape_secret=secret,  # authz
        tls=_server_tls(args),  # transport security: its merged /metrics, the bind rule
        insecure=args.insecure,
    ))
    return asyncio.run(supervisor.run())


def _infer(args: argparse.Namespace) -> int:
    from sluice.clients import Client, SluiceClientError
    from sluice.clients.messages import decode_response
    from sluice.server.cli_inputs import InputError, parse_inputs, request_inputs

    try:
        given = parse_inputs(args.input)
        with Client(args.url, **connection(args)) as client:
            meta = client.model_metadata(args.model, version=args.version)
            inputs = request_inputs(args.model, meta, given, args.batch, np.random.default_rng())
            request = client.build_request(args.model, inputs, version=args.version or None)
            response = client.infer_request(request, timeout=args.timeout)
            outputs = decode_response(response)
    except InputError as exc:
        print(f"sluice infer: {exc}", file=sys.stderr)
        return 2
    except SluiceClientError as exc:
        print(f"sluice infer: {exc}", file=sys.stderr)
        return 1
    if not given:
        print(f"(random inputs: {', '.join(f'{n} {list(v.shape)}' for n, v in inputs.items())})")
    arm = response.parameters.get("sluice_arm")
    print(f"answered by {response.model_name} version {response.model_version}"
          + (f" (arm {arm.string_param})" if arm is not None else ""))
    np.set_printoptions(precision=5, suppress=True, threshold=200)
    for name, value in outputs.items():
        print(f"{name} {value.dtype} {list(value.shape)}:\n{value}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from sluice.clients import Client, SluiceClientError

    try:
        with Client(args.url, **connection(args)) as client:
            table: dict[str, Any] = client.latency(args.model)
    except SluiceClientError as exc:
        print(f"sluice stats: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    # columns as wide as their longest entry: a long model name never shifts the others
    width = max([len("model"), *map(len, table)]) + 2
    ver = max([len("ver"), *(len(v) for versions in table.values() for v in versions)]) + 1
    print(f"{'model':<{width}}{'ver':>{ver}}{'stage':>9}{'p50 ms':>10}{'p95 ms':>10}"
          f"{'p99 ms':>10}{'requests':>10}")
    for model, versions in sorted(table.items()):
        for version, stages in sorted(versions.items()):
            for stage in ("e2e", "queue", "compute"):
                q = stages.get(stage)
                cells = ("-", "-", "-") if not q else tuple(
                    f"{q[p] * 1000:.3f}" for p in ("p50", "p95", "p99"))
                count = stages.get("requests", 0) if stage == "e2e" else ""
                print(f"{model:<{width}}{version:>{ver}}{stage:>9}{cells[0]:>10}{cells[1]:>10}"
                      f"{cells[2]:>10}{count!s:>10}")
    print_cost(table, width, ver)
    return 0
