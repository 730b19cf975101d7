"""A server's certificates, read at start and again on SIGHUP (transport security, issue 14).

:class:`CertificateReloader` owns the current :class:`~sluice.server.config.tls.TlsMaterial`
and the listeners that serve it (the gRPC port's credentials, the /metrics endpoint's context).
A reload reads and checks every file first (on a thread: the event loop never reads a file) and
hands the new material to the listeners only if all of it is good: a half-written certificate
or a key that does not match leaves the server on its previous certificate, logged and counted
(``sluice_tls_reloads_total{outcome="failure"}``), never without one. Connections already open
keep theirs; only new handshakes see the new certificate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.server.config.tls import (
    BindRefused,
    TlsError,
    TlsFiles,
    TlsMaterial,
    check_bind,
    load_tls,
)

log = logging.getLogger(__name__)

__all__ = ["BindRefused", "CertificateReloader", "TlsError", "open_transport"]


class CertificateReloader(Collector):
    """The certificate material of one process and who serves it; a Prometheus collector of
    its reloads. Built by :func:`open_transport`, which reads the files the first time."""

    def __init__(self, files: TlsFiles, material: TlsMaterial) -> None:
        self.files = files
        #: What listeners started now are given, and the last that every listener was given.
        self.material = material
        self._listeners: list[Callable[[TlsMaterial], None]] = []
        self._outcomes = {"success": 0, "failure": 0}
        self._lock = asyncio.Lock()

    def on_reload(self, listener: Callable[[TlsMaterial], None]) -> None:
        """Call ``listener(material)`` with the new material after each successful reload."""
        self._listeners.append(listener)

    async def reload(self) -> bool:
        """Read the files again and, if they are good, hand them to every listener; whether
        that happened. Reloads run one at a time (a second SIGHUP waits for the first)."""
        async with self._lock:
            try:
                material = await asyncio.to_thread(load_tls, self.files)
            except TlsError as exc:
                self._outcomes["failure"] += 1
                log.error("certificates not reloaded, the previous ones still serve: %s", exc)
                return False
            for listener in self._listeners:
                listener(material)
            self.material = material
            self._outcomes["success"] += 1
            log.info("certificates reloaded from %s; new connections get them", self.files.cert)
            return True

    def collect(self) -> Iterable[Metric]:
        reloads = CounterMetricFamily(
            "sluice_tls_reloads", "Certificate reloads (SIGHUP), by outcome; a failure keeps "
            "the previous certificate.", labels=["outcome"])
        for outcome, count in self._outcomes.items():
            reloads.add_metric([outcome], count)
        yield reloads


def open_transport(
    files: TlsFiles | None, hosts: list[str], *, insecure: bool
) -> CertificateReloader | None:
    """Check the bind rule for ``hosts`` (the addresses to listen on) and read ``files``:
    the reloader to serve them with, or None for plaintext (which the rule allows only on
    loopback or with ``insecure``, then with a warning logged). Raises BindRefused or
    TlsError, whose messages name the flags to change. Blocking (reads the files)."""
    warning = check_bind(hosts, tls=files is not None, insecure=insecure)
    if warning is not None:
        log.warning("%s", warning)
    if files is None:
        return None
    return CertificateReloader(files, load_tls(files))
