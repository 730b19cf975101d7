"""``sluice serve`` flags of a fleet sharing its deployment state in etcd (issue 15)."""

from __future__ import annotations

import argparse
from typing import Any

from sluice.server.fleet.location import (
    EtcdLocation,
    MetricsSourceURLError,
    StateStoreURLError,
    prometheus_base_url,
)


def _lease(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of seconds >= 1")
    return value


def _store(text: str) -> str:
    try:
        EtcdLocation.parse(text)
    except StateStoreURLError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--state-store ")) from None
    return text


def _source(text: str) -> str:
    try:
        prometheus_base_url(text)
    except MetricsSourceURLError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--metrics-source: ")) from None
    return text


def _period(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError("must be seconds in [0.05, 60]")
    return value


def add_fleet_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--state-store", type=_store, default=None, metavar="URL",
                       help="etcd://HOST:PORT/PREFIX: keep the deployment state, its audit log "
                       "and the canary driver's lock in etcd, shared by every replica that "
                       "names it (default: files in --state-dir)")
    serve.add_argument("--leader-lease", type=_lease, default=10, metavar="SECONDS",
                       help="lease of the replica driving canaries: another takes over within "
                       "it when that replica dies (default 10)")
    serve.add_argument("--metrics-source", type=_source, default=None, metavar="URL",
                       help="prometheus://HOST:PORT: judge canary gates with PromQL over every "
                       "replica Prometheus scrapes (default: with --state-store, the replicas' "
                       "counters summed through etcd; else this server's own)")
    serve.add_argument("--fleet-counters-interval", type=_period, default=1.0,
                       metavar="SECONDS", help="how often each replica publishes its canary "
                       "gate counters to etcd (default 1)")


def fleet_settings(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields from the flags."""
    return {"state_store": args.state_store, "leader_lease_s": args.leader_lease,
            "metrics_source": args.metrics_source,
            "fleet_counters_interval_s": args.fleet_counters_interval}
