"""/metrics behind a bearer token: the exposition of a registry, served only to callers whose
``Authorization: Bearer <token>`` header holds the ``ops`` scope (``--tokens``).

Without a token: 401 with ``WWW-Authenticate: Bearer``; a token without ``ops``: 403 naming the
scope. The token check is the gRPC one (:class:`~sluice.server.auth.verifier.TokenVerifier`:
a keyed hash and a dict lookup once the token is known). ``extra_secret`` is a second accepted
credential for the ``--workers`` supervisor's scrapes of its workers (a random string it hands
each worker; never written anywhere), compared in constant time. Serves on threads of its own,
as prometheus_client's own server does; ``ssl_context`` wraps the socket for TLS.
"""

from __future__ import annotations

import hmac
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from sluice.server.auth.verifier import TokenVerifier

#: Seconds between two looks at the tokens file for changes.
_RELOOK_S = 2.0
#: The scope /metrics needs.
METRICS_SCOPE = "ops"
#: check(Authorization header or None) -> None when allowed, else (HTTP status, message).
MetricsCheck = Callable[[str | None], "tuple[int, str] | None"]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr (prometheus_client's server keeps quiet too)."""


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


def guarded_app(registry: CollectorRegistry, check: MetricsCheck) -> Callable[..., Any]:
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


def serve_guarded(registry: CollectorRegistry, host: str, port: int, check: MetricsCheck,
                  ssl_context: ssl.SSLContext | None = None) -> WSGIServer:
    """Serve ``registry`` on ``host:port`` (0: a free one) behind ``check``, on a daemon
    thread; the caller owns the returned server (``shutdown()``, ``server_close()``)."""
    server = make_server(host, port, guarded_app(registry, check), _ThreadingServer,
                         handler_class=_QuietHandler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="sluice-metrics", daemon=True)
    thread.start()
    return server
