"""The ``/metrics`` HTTP endpoint, plain or TLS, for a server and for the ``--workers``
supervisor.

prometheus_client's own ``start_http_server`` wraps its listening socket in TLS, which makes its
one accepting thread perform every handshake: a client that connects and sends nothing holds
up every scrape behind it. Here the listening socket stays plain and each connection, on its
own thread, does its handshake (bounded by ``handshake_timeout_s``) with whatever context is
current when it arrives, so :meth:`MetricsEndpoint.replace_context` swaps certificates for new
connections without a restart. The exposition itself is prometheus_client's WSGI app (content
negotiation, OpenMetrics, gzip).
"""

from __future__ import annotations

import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import Collector


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scraper never holds up shutdown
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout_s = 10.0
    refused_handshakes = 0

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.ssl_context  # read once: a reload mid-handshake does not mix contexts
        if context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.handshake_timeout_s)
        try:
            connection = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):  # no or a bad client certificate, not TLS, timed out
            self.refused_handshakes += 1
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()


class MetricsEndpoint:
    """Serves one registry's ``/metrics`` on ``host:port`` (0 picks a free port) from a
    background thread until :meth:`close`; HTTPS when ``context`` is given."""

    def __init__(
        self, registry: Collector, host: str, port: int, context: ssl.SSLContext | None = None
    ) -> None:
        family = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (_Server,), {"address_family": family})
        self._httpd: _Server = make_server(host.strip("[]"), port, make_wsgi_app(registry),
                                           server_class, handler_class=_QuietHandler)
        self._httpd.ssl_context = context
        self.port: int = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="sluice-metrics-http", daemon=True)
        self._thread.start()

    @property
    def scheme(self) -> str:
        return "http" if self._httpd.ssl_context is None else "https"

    @property
    def refused_handshakes(self) -> int:
        """TLS handshakes that failed (no or an untrusted client certificate, not TLS, ...)."""
        return self._httpd.refused_handshakes

    def replace_context(self, context: ssl.SSLContext) -> None:
        """Use ``context`` for connections from now on (any thread); open ones keep theirs."""
        self._httpd.ssl_context = context

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
