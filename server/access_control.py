"""Who may call what, as one part of the composition root (issue 14, items 2-3).

Owns the tokens file's verifier (``--tokens``; None without), the auth interceptor built on it,
the access audit trail (admin calls always; refused calls) and its writer thread, the task
that rereads the tokens file when it changes, and the metrics of all of these. The gRPC server
gets :meth:`AccessControl.interceptors` (none without ``--tokens``: no per-call cost) and
registers its services through :meth:`AccessControl.registrar`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import grpc
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.server.auth.audit import AUDIT_FILE, AuditTrail
from sluice.server.auth.tokens import TokenFileError
from sluice.server.auth.verifier import TokenVerifier
from sluice.server.config.settings import ServerConfig
from sluice.server.metrics import Metrics
from sluice.server.metrics_http import MetricsCheck, metrics_auth
from sluice.server.protocol.audited import AuditedRegistrar
from sluice.server.protocol.auth import AuthInterceptor
from sluice.server.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class AccessControl:
    """Tokens, scopes, quotas and the access audit trail of one server process."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self._config = config
        self.audit = AuditTrail(config.deployment_state_dir / AUDIT_FILE,
                                max_queued=config.audit_queue_records)
        self.verifier: TokenVerifier | None = None
        self.interceptor: AuthInterceptor | None = None
        self._reload: asyncio.Task[None] | None = None
        metrics.register(_AccessCollector(self))

    def open(self) -> None:
        """Read the tokens file, if one is configured. Raises TokenFileError or OSError."""
        if self._config.tokens_file is None:
            return
        self.verifier = TokenVerifier(self._config.tokens_file)
        self.interceptor = AuthInterceptor(self.verifier, self.audit)

    def interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        return () if self.interceptor is None else (self.interceptor,)

    def registrar(self, server: grpc.aio.Server) -> AuditedRegistrar:
        return AuditedRegistrar(server, self.audit)

    def metrics_check(self) -> MetricsCheck | None:
        """Who may read /metrics: None (anyone) without ``--tokens``."""
        if self.verifier is None:
            return None
        return metrics_auth(self.verifier, self._config.metrics_scrape_secret)

    def start(self) -> None:
        self.audit.start()
        if self.verifier is not None:
            self._reload = asyncio.get_running_loop().create_task(
                self._watch(self.verifier), name="sluice-tokens-reload")

    async def _watch(self, verifier: TokenVerifier) -> None:
        """Reread the tokens file whenever it changes (a revocation takes effect then)."""
        while True:
            await asyncio.sleep(self._config.tokens_reload_s)
            try:
                if await asyncio.to_thread(verifier.reload_if_changed):
                    log.info("tokens file changed; reloaded")
            except (TokenFileError, OSError) as exc:
                log.error("tokens file unusable, the previous one stays in force: %s", exc)

    async def close(self) -> None:
        reload, self._reload = self._reload, None
        await cancel_and_wait(reload)
        await asyncio.to_thread(self.audit.close)


class _AccessCollector(Collector):
    def __init__(self, access: AccessControl) -> None:
        self._access = access

    def collect(self) -> Iterable[Metric]:
        access = self._access
        audit = CounterMetricFamily("sluice_access_audit_lines",
                                    "Access audit lines, by fate (written and fsynced, or "
                                    "dropped: queue full or the file failed).", labels=["fate"])
        audit.add_metric(["written"], access.audit.written)
        audit.add_metric(["dropped"], access.audit.dropped)
        yield audit
        if access.interceptor is None or access.verifier is None:
            return
        refused = CounterMetricFamily("sluice_auth_refused",
                                      "Calls refused by the access check, by status.",
                                      labels=["status"])
        for status in ("UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"):
            refused.add_metric([status], access.interceptor.refused.get(status, 0))
        kdf = CounterMetricFamily("sluice_auth_kdf_runs",
                                  "Token hashes computed (a token's first use in this process, "
                                  "or a wrong secret for a known token id).")
        kdf.add_metric([], access.verifier.kdf_runs)
        yield refused
        yield kdf
