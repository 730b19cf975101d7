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
        parsed, port = _split(url, "etcd", "--state-store", "etcd://HOST:PORT/PREFIX", 2379,
                              StateStoreURLError)
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
    parsed, port = _split(url, "prometheus", "--metrics-source", "prometheus://HOST:PORT[/PATH]",
                          9090, MetricsSourceURLError)
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"http://{host}:{port}{parsed.path.rstrip('/')}"


def _split(url: str, scheme: str, flag: str, form: str, default_port: int,
           error: type[ValueError]) -> tuple[urllib.parse.SplitResult, int]:
    """``url`` split, and its port (``default_port`` when none), when it is ``scheme://HOST``
    with an optional port and path and nothing else; else ``error`` naming ``flag`` and the
    expected ``form``. The value itself is never echoed: it may carry credentials."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != scheme or not parsed.hostname:
        raise error(f"{flag}: expected {form}")
    if parsed.username or parsed.password or parsed.query or parsed.fragment:
        raise error(f"{flag}: only {form} is understood (no credentials, query or fragment)")
    try:
        return parsed, parsed.port or default_port
    except ValueError:
        raise error(f"{flag}: the port is not a number") from None
