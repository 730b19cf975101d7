"""Where a fleet's state lives: ``--state-store etcd://HOST:PORT/PREFIX``, parsed without
importing the etcd client (the command line checks it before anything starts)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass


class StateStoreURLError(ValueError):
    """A ``--state-store`` value that is not ``etcd://host:port[/prefix]``."""


@dataclass(frozen=True, slots=True)
class EtcdLocation:
    """Where the fleet's state lives: an etcd member and a key prefix."""

    host: str
    port: int
    #: Key prefix, with a leading slash and none at the end ("/sluice").
    prefix: str

    @classmethod
    def parse(cls, url: str) -> EtcdLocation:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "etcd" or not parsed.hostname:
            raise StateStoreURLError(f"--state-store {url!r}: expected etcd://HOST:PORT/PREFIX")
        if parsed.username or parsed.password or parsed.query or parsed.fragment:
            raise StateStoreURLError("--state-store: only etcd://HOST:PORT/PREFIX is understood "
                                     "(no credentials, query or fragment)")
        try:
            port = parsed.port or 2379
        except ValueError:
            raise StateStoreURLError(f"--state-store {url!r}: the port is not a number") from None
        prefix = "/" + parsed.path.strip("/") if parsed.path.strip("/") else "/sluice"
        return cls(parsed.hostname, port, prefix)

    def __str__(self) -> str:
        return f"etcd {self.host}:{self.port} prefix '{self.prefix}'"


# fleet gates (issue 15 item 2): where the canary gates read the fleet's metrics
class MetricsSourceURLError(ValueError):
    """A ``--metrics-source`` value that is not ``prometheus://host:port``."""


def prometheus_base_url(url: str) -> str:
    """``prometheus://HOST:PORT[/PATH]`` as the HTTP base URL of Prometheus's API; raises
    MetricsSourceURLError naming the expected form (never echoing credentials)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "prometheus" or not parsed.hostname:
        raise MetricsSourceURLError("--metrics-source: expected prometheus://HOST:PORT")
    if parsed.username or parsed.password or parsed.query or parsed.fragment:
        raise MetricsSourceURLError("--metrics-source: only prometheus://HOST:PORT[/PATH] is "
                                    "understood (no credentials, query or fragment)")
    try:
        port = parsed.port or 9090
    except ValueError:
        raise MetricsSourceURLError("--metrics-source: the port is not a number") from None
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"http://{host}:{port}{parsed.path.rstrip('/')}"
