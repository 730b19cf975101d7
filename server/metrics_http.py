"""The ``/metrics`` HTTP endpoint of a server and of the ``--workers`` supervisor: plain or TLS
(transport security), and behind a bearer token when ``--tokens`` is on (authz).

Tokens: only callers whose ``Authorization: Bearer <token>`` header holds the ``ops`` scope
read it. Without a token: 401 with ``WWW-Authenticate: Bearer``; a token without ``ops``: 403
naming the scope. The token check is the gRPC one
(:class:`~sluice.server.auth.verifier.TokenVerifier`: a keyed hash and a dict lookup once the
token is known). ``extra_secret`` is a second accepted credential for the ``--workers``
supervisor's scrapes of its workers (a random string it hands each worker; never written
anywhere), compared in constant time.

TLS: prometheus_client's own ``start_http_server`` wraps its listening socket in TLS, which
makes its one accepting thread perform every handshake: a client that connects and sends
nothing holds up every scrape behind it. Here the listening socket stays plain and each
connection, on its own thread, does its handshake (bounded by ``handshake_timeout_s``) with
whatever context is current when it arrives, so :meth:`MetricsEndpoint.replace_context` swaps
certificates for new connections without a restart. The exposition itself is
prometheus_client's WSGI app (content negotiation, OpenMetrics, gzip).
"""

from __future__ import annotations

import hmac
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import Collector

from sluice.server.auth.verifier import TokenVerifier

#: Seconds between two looks at the tokens file for changes.
_RELOOK_S = 2.0
#: The scope /metrics needs.
METRICS_SCOPE = "ops"
#: check(Authorization header or None) -> None when allowed, else (HTTP status, message).
MetricsCheck = Callable[[str | None], "tuple[int, str] | None"]


def metrics_auth(verifier: TokenVerifier, extra_secret: str | None = None) -> MetricsCheck:
    """``check(Authorization header)``: None when it may read /metrics, else (HTTP status,
    message)."""
    last_look = [time.monotonic()]

    def check(header: str | None) -> tuple[int, str] | None:
        if time.monotonic() - last_look[0] >= _RELOOK_S:  # a revocation holds here too
            last_look[0] = time.monotonic()
            try:
                verifier.reload_if_changed()
            except (ValueError, OSError):
                pass  # the last good file stays in force; the gRPC side logs it
        if not header or header[:7].lower() != "bearer ":
            return 401, "send 'Authorization: Bearer <token>' (a token with scope 'ops')"
        token = header[7:].strip()
        if extra_secret is not None and hmac.compare_digest(token.encode(),
                                                            extra_secret.encode()):
            return None
        principal = verifier.verify(token)
        if principal is None:
            return 401, "the bearer token is not valid (unknown, revoked or mistyped)"
        if METRICS_SCOPE not in principal.scopes:
            return 403, f"'{principal.name}' lacks scope '{METRICS_SCOPE}', which /metrics needs"
        return None
    return check


def guarded_app(registry: Collector, check: MetricsCheck) -> Callable[..., Any]:
    """The registry's WSGI exposition, answering only requests ``check`` lets through."""
    exposition = make_wsgi_app(registry)
    reasons = {401: "401 Unauthorized", 403: "403 Forbidden"}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        refused = check(environ.get("HTTP_AUTHORIZATION"))
        if refused is None:
            return exposition(environ, start_response)
        status, message = refused
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="sluice"'))
        start_response(reasons[status], headers)
        return [message.encode() + b"\n"]
    return app


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
    background thread until :meth:`close`; HTTPS when ``context`` is given, only to callers
    ``check`` lets through when it is given (``--tokens``)."""

    def __init__(
        self, registry: Collector, host: str, port: int, context: ssl.SSLContext | None = None,
        check: MetricsCheck | None = None,
    ) -> None:
        app = make_wsgi_app(registry) if check is None else guarded_app(registry, check)
        family = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (_Server,), {"address_family": family})
        self._httpd: _Server = make_server(host.strip("[]"), port, app,
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
