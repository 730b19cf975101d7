"""TLS for the clients: credentials from PEM files, and the channels every client opens.

    creds = tls_credentials(ca="ca.pem")                                   # TLS
    creds = tls_credentials(ca="ca.pem", cert="me.pem", key="me.key")      # mTLS
    with Client("sluice.internal:8001", credentials=creds) as client: ...

Every client (:class:`~sluice.clients.Client`, :class:`~sluice.clients.AsyncClient` and its
streams, :class:`~sluice.clients.AdminClient`) takes ``credentials``: any
``grpc.ChannelCredentials`` (these, or ones composed with call credentials); None means a
plaintext channel. The server's certificate must name the host of the target (its subject
alternative names); to reach it by another name, pass the channel option
``("grpc.ssl_target_name_override", NAME)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

__all__ = ["open_aio_channel", "open_channel", "tls_credentials"]

PemSource = str | Path | bytes


def _pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def tls_credentials(
    ca: PemSource | None = None, cert: PemSource | None = None, key: PemSource | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials for TLS: ``ca`` the PEM certificates to trust the server by (None:
    the system's roots), ``cert`` and ``key`` this client's certificate chain and key for a
    server that asks for one (mTLS; both or neither). Each is a file path or the PEM bytes.

    Raises ValueError when only one of ``cert`` and ``key`` is given and OSError when a file
    cannot be read; the contents are checked by the handshake (a bad one fails the call with
    UNAVAILABLE)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca), private_key=_pem(key), certificate_chain=_pem(cert)
    )


def open_channel(
    target: str, options: Sequence[tuple[str, Any]], credentials: grpc.ChannelCredentials | None
) -> grpc.Channel:
    """A blocking channel to ``target``: secure with ``credentials``, else plaintext."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(
    target: str, options: Sequence[tuple[str, Any]], credentials: grpc.ChannelCredentials | None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: secure with ``credentials``, else plaintext; calls go
    through ``interceptors`` (the bearer token's, :func:`sluice.clients.auth.aio_interceptors`)."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options,
                                   interceptors=interceptors)
