"""Calls spread over several replicas of a server: the gRPC target and channel options for it.

    Client(["10.0.0.7:8001", "10.0.0.8:8001"])                   # a list of IP:PORT addresses
    Client("dns:///sluice-headless.prod.svc.cluster.local:8001")  # every address a name resolves to

gRPC balances, not us: every channel a client opens uses gRPC's ``round_robin`` load-balancing
policy, which keeps a connection to every address the target resolves to and sends each call
to the next ready one. A Kubernetes headless Service (``clusterIP: None``) resolves to the
address of every ready pod, so a ``dns:///`` target over it spreads calls over the replicas;
gRPC resolves the name again when a connection drops (a pod going away) and at most every 30 s
otherwise (its DNS resolver's own minimum). A plain ``host:port`` target resolves through DNS
too, so it is balanced the same way when its name has several addresses.

With ``health_check`` the channel also watches every replica's ``grpc.health.v1`` status (the
whole server's, service name "": gRPC's client-side health checking) and sends only to
replicas that say SERVING: a replica that is loading its models or shutting down gets no new
calls, before DNS or the Service's endpoints have caught up. It is on by default for targets
that name several replicas (a list, a ``dns:`` target, an ``ipv4:``/``ipv6:`` list) and off for
one ``host:port`` address, where calls must still reach a server that is loading (to ask
ServerReady, for one). A server without the health service counts as healthy (gRPC's rule).

Retries (:mod:`sluice.clients.retry`) go through the same balancer: the next attempt of a call
that a replica refused with UNAVAILABLE is sent to the next ready replica, not back to the same
one. When the client spreads over replicas, a replica's "draining" refusal (it is shutting down)
is retried at once on another instead of waiting out the pushback the draining one asked for.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["balancing_options", "grpc_target", "spreads"]

#: The channel's service config: round_robin over the resolved addresses.
_ROUND_ROBIN: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
#: gRPC's client-side health checking: watch grpc.health.v1 for the server as a whole.
_HEALTH_CHECK: dict[str, Any] = {"healthCheckConfig": {"serviceName": ""}}

Target = str | Sequence[str]


def grpc_target(target: Target) -> str:
    """The gRPC target string for ``target``: a string is used as it is (``host:port``,
    ``dns:///name:port``, ``ipv4:a:p,b:p``, ...); a sequence of ``IP:PORT`` addresses (IPv6 as
    ``[addr]:port``) becomes an ``ipv4:`` or ``ipv6:`` list target.

    Raises ValueError naming the entry when a sequence is empty, holds something that is not an
    IP literal with a port (a host name: name it once as ``dns:///NAME:PORT``), or mixes IPv4
    and IPv6 (gRPC has no list target for both)."""
    if isinstance(target, str):
        return target
    addresses = list(target)
    if not addresses:
        raise ValueError("no replica addresses given")
    families = {_family(address) for address in addresses}
    if len(families) > 1:
        raise ValueError("replica addresses mix IPv4 and IPv6; gRPC lists one family per "
                         "target: use one, or a dns:/// name that resolves to all")
    return f"{families.pop()}:{','.join(addresses)}"


def _family(address: str) -> str:
    if not isinstance(address, str):
        raise ValueError(f"replica address {address!r} is not a string 'IP:PORT'")
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
        number = int(port)
    except ValueError:
        ip, number = None, -1
    if not sep or ip is None or not 0 < number < 65536 or (ip.version == 6) != bracketed:
        raise ValueError(f"replica address {address!r} is not IP:PORT (IPv6 as [IP]:PORT); "
                         "for a host name, pass one target 'dns:///NAME:PORT' instead")
    return f"ipv{ip.version}"


def spreads(target: Target) -> bool:
    """Whether ``target`` names several replicas, or may (a ``dns:`` name): a list of more than
    one address, a ``dns:`` target, or an ``ipv4:``/``ipv6:`` list of more than one."""
    if not isinstance(target, str):
        return len(list(target)) > 1
    scheme, _, rest = target.partition(":")
    return scheme == "dns" or (scheme in ("ipv4", "ipv6") and "," in rest)


def balancing_options(target: Target, health_check: bool | None) -> list[tuple[str, Any]]:
    """Channel options that balance calls over ``target``'s replicas with round_robin, and
    watch their health when ``health_check`` says so (None: when the target spreads)."""
    config = dict(_ROUND_ROBIN)
    if spreads(target) if health_check is None else health_check:
        config.update(_HEALTH_CHECK)
    return [("grpc.service_config", json.dumps(config))]
