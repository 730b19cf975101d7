"""``sluice health``: ask a server's standard ``grpc.health.v1.Health/Check`` once.

    sluice health [--url HOST:PORT] [--service NAME] [--timeout SECONDS]

Exit status 0 when the answer is SERVING; 1 otherwise (NOT_SERVING while the models load or
the server drains, a service it does not know, no answer in time), with one line on stderr
saying which. It is what the images' HEALTHCHECK runs (Dockerfile, Dockerfile.gpu): the same
service, on the same port, that Kubernetes' ``grpc:`` probes ask (deploy/k8s), so the container
runtime and the cluster judge a replica alike. The health service needs no token (Kubernetes
probes send none); ``--tls-ca`` and the other connection flags work as for every verb.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.server.cli_connect import ConnectionFlagError, connection


def add_health_command(sub: Any, add_url: Callable[[argparse.ArgumentParser], None]) -> None:
    health = sub.add_parser(
        "health", help="ask a server's grpc.health.v1 Check; exit 0 when SERVING",
        description="Ask the standard gRPC health service of a running server, as Kubernetes' "
        "grpc probes do; exit status 0 when it answers SERVING, 1 otherwise.",
    )
    add_url(health)
    health.add_argument("--service", default="", metavar="NAME",
                        help="service to ask about (default '': the whole server; "
                        "'inference.GRPCInferenceService' is the inference API alone)")
    health.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="seconds to wait for the answer (default 5)")


def run_health(args: argparse.Namespace) -> int:
    try:
        credentials = connection(args).get("credentials")
    except ConnectionFlagError as exc:
        print(f"sluice health: {exc}", file=sys.stderr)
        return 2
    channel = (grpc.insecure_channel(args.url) if credentials is None
               else grpc.secure_channel(args.url, credentials))
    what = f"service '{args.service}'" if args.service else "server"
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as exc:
        call: Any = exc  # a failed blocking call is also a grpc.Call
        print(f"sluice health: {args.url}: {what} not healthy: [{call.code().name}] "
              f"{call.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"sluice health: {args.url}: {what} is {status}", file=sys.stderr)
        return 1
    print(f"{args.url}: {what} is SERVING")
    return 0
