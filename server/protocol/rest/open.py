"""Opening the REST door as a server's settings ask (``--http-port``), next to the gRPC port."""

from __future__ import annotations

import logging

from sluice.server.auth.audit import AuditTrail
from sluice.server.config.settings import ServerConfig
from sluice.server.protocol.auth import AuthInterceptor
from sluice.server.protocol.rest.door import RestDoor
from sluice.server.protocol.servicer import InferenceServicer
from sluice.server.tls_reload import CertificateReloader

log = logging.getLogger(__name__)

__all__ = ["RestDoor", "open_rest"]


async def open_rest(
    config: ServerConfig, servicer: InferenceServicer, tls: CertificateReloader | None,
    auth: AuthInterceptor | None, audit: AuditTrail | None,
) -> RestDoor | None:
    """A started door on ``config.http_port`` (TLS when the server has it; tokens when it has
    them), or None when the port is taken and not required (a warning says so). Raises
    OSError, naming the flag to change, when a required port cannot be bound."""
    assert config.http_port is not None
    door = RestDoor(servicer, config.request_limits, config.max_message_bytes, auth=auth,
                    audit=audit)
    try:
        await door.start(config.host, config.http_port, tls=tls, reuse_port=config.reuse_port,
                         shutdown_timeout_s=config.shutdown_grace_s)
    except OSError as exc:
        message = (f"HTTP port {config.http_port} on {config.host} cannot be bound "
                   f"({exc.strerror}); pick another with --http-port (0: any free port), or -1 "
                   "to serve no REST")
        if config.http_port_required:
            raise OSError(message) from None
        log.warning("%s; serving gRPC only", message)
        return None
    return door
