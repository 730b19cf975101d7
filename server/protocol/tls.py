"""TLS on the gRPC port, with certificates that can be replaced while the server runs.

gRPC's dynamic SSL server credentials ask a *fetcher* for a new certificate configuration each
time a connection starts its handshake; ours answers from memory (no file is read on a
handshake): ``None`` (keep the current one) unless :meth:`ReloadableServerCredentials.replace`
has queued a new one since, which it then hands over once. Connections already established keep
the session they negotiated, so a reload drops no stream; every connection made after it is
offered the new certificate.

With a client CA (mTLS) gRPC refuses, at the handshake, a client that presents no certificate
or one the CA did not sign: no RPC of it ever reaches a servicer.
"""

from __future__ import annotations

import threading

import grpc

from sluice.server.config.tls import TlsMaterial
from sluice.server.tls_reload import CertificateReloader


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert_chain)], root_certificates=material.client_ca
    )


class ReloadableServerCredentials:
    """Server credentials for ``add_secure_port`` whose certificate can be swapped."""

    def __init__(self, material: TlsMaterial) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        #: Whether clients must present a certificate (fixed for the server's life: the flag
        #: ``--tls-client-ca`` is given or not; its file's contents may change on reload).
        self.mutual = material.client_ca is not None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            _configuration(material), self._fetch, require_client_authentication=self.mutual
        )

    def replace(self, material: TlsMaterial) -> None:
        """Offer ``material`` from the next handshake on (any thread)."""
        configuration = _configuration(material)
        with self._lock:
            self._pending = configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC's core on its own threads at each handshake: memory only, no I/O.
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def add_port(server: grpc.aio.Server, address: str, tls: CertificateReloader | None) -> int:
    """Listen on ``address``: with ``tls``'s certificates (swapped when it reloads), else
    plaintext; the bound port (0 when it cannot be bound, as grpc reports it)."""
    if tls is None:
        return server.add_insecure_port(address)
    credentials = ReloadableServerCredentials(tls.material)
    tls.on_reload(credentials.replace)
    return server.add_secure_port(address, credentials.credentials)
