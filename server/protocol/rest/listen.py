"""The REST door's listening socket and its TLS context (certificates swapped on reload)."""

from __future__ import annotations

import socket
import ssl
from typing import Any


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # --workers: the siblings share the port, as they share gRPC's
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Swapping(ssl.SSLContext):
    """A server TLS context whose handshakes use the newest certificates: asyncio keeps the
    context a server was started with, so this one hands each new connection to the context
    of the last reload (SIGHUP), whatever name the client asked for (none, for an address)."""

    current: ssl.SSLContext

    def __new__(cls, first: ssl.SSLContext) -> Swapping:
        made = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        made.current = first
        return made

    def __init__(self, first: ssl.SSLContext) -> None:
        pass  # SSLContext takes its protocol in __new__

    def swap(self, material: Any) -> None:
        self.current = material.http_context

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # type: ignore[override]
        return self.current.wrap_bio(*args, **kwargs)
