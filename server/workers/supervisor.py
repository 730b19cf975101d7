"""``sluice serve --workers N``: N server processes on one gRPC port, supervised.

Each worker is a whole ``sluice serve`` process (its own models, batchers, event loop and
/metrics on a private loopback port) started with ``--worker-id K``, which binds the gRPC port
with SO_REUSEPORT; the kernel spreads incoming connections over the workers. Workers are new
processes (fork + exec), never forks of this one: gRPC does not survive ``fork``.

The supervisor:

* binds the port first (SO_REUSEPORT, not listening; ``--grpc-port 0`` picks it here) and
  holds it while it runs, so every worker, and every restarted worker, gets the same port;
* prints ``sluice: gRPC listening on HOST:PORT`` once, when every worker is serving, and serves
  the merged /metrics of all workers (:mod:`sluice.server.workers.merged_metrics`) on
  ``--metrics-port``;
* restarts a worker that exits, after a backoff that doubles while it keeps dying young, and
  counts it (``sluice_worker_restarts_total``); a worker that fails before the first time all
  were serving fails the start instead (exit status 1);
* on SIGTERM/SIGINT, forwards the signal to every worker, which drains gracefully, and exits 0
  once all have; a worker still running ``shutdown_grace_s`` + ``kill_margin_s`` later is
  killed (exit status 1);
* with TLS, serves the merged /metrics over HTTPS (the workers' own /metrics stay plain on
  loopback: only the supervisor reads them); on SIGHUP reloads its certificates and forwards
  the signal to every worker, each of which reloads its own (a worker still starting gets it
  once it serves: it may have read the files before they changed).

Workers read their stdin, a pipe from the supervisor: if the supervisor dies, even by SIGKILL,
they see end of file and shut down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from sluice.server.config.tls import TlsFiles
from sluice.server.metrics_http import MetricsCheck, MetricsEndpoint
from sluice.server.tls_reload import BindRefused, CertificateReloader, TlsError, open_transport
from sluice.server.workers.merged_metrics import WorkerMetrics, fetch_metrics

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"^sluice: gRPC listening on (\S+)$")
_METRICS = re.compile(r"^sluice: metrics on (\S+)$")
_LINE_LIMIT = 1 << 20
#: The environment variable a worker reads the supervisor's /metrics credential from.
SCRAPE_SECRET_ENV = "SLUICE_METRICS_SCRAPE_SECRET"


class WorkerStartError(RuntimeError):
    """A worker exited before every worker was serving for the first time."""


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """How the supervisor runs its workers."""

    #: Number of worker processes.
    workers: int
    #: Address the gRPC port is bound on (and /metrics served on).
    host: str
    #: gRPC port; 0 picks a free one.
    grpc_port: int
    #: The merged /metrics HTTP port; None: off (workers then serve no metrics either).
    metrics_port: int | None
    #: (worker id, gRPC port) -> the worker's command line.
    worker_argv: Callable[[int, int], Sequence[str]]
    #: Time workers get to drain after a signal.
    shutdown_grace_s: float = 10.0
    #: Extra time past the grace before a worker still running is killed.
    kill_margin_s: float = 5.0
    #: Wait before the first restart of a worker; doubles per quick death.
    restart_backoff_s: float = 0.5
    #: Longest wait before a restart.
    max_restart_backoff_s: float = 30.0
    #: A worker that served this long before dying is restarted after the shortest wait again.
    stable_after_s: float = 60.0
    # -- authz (issue 14 items 2-3) --
    #: Who may read the merged /metrics (``--tokens``); None: anyone.
    metrics_check: MetricsCheck | None = None
    #: The credential the workers' /metrics accept from this supervisor (handed to each in
    #: the environment as ``SLUICE_METRICS_SCRAPE_SECRET``); None: their /metrics are open.
    scrape_secret: str | None = None
    # -- transport security (issue 14 item 1) --
    #: Certificates of the merged /metrics (the workers get theirs from their command line).
    tls: TlsFiles | None = None
    #: Plaintext on a non-loopback host allowed (``--insecure``).
    insecure: bool = False


@dataclass(slots=True)
class RestartBackoff:
    """How long one worker slot waits before restarting its worker: ``base_s`` after a death,
    doubling with each death that follows a short life, never more than ``max_s``; a life of
    ``stable_after_s`` or longer starts again from ``base_s``. Pure: the caller measures each
    life and is told the wait, so tests drive it without processes or clocks."""

    #: Wait after the first death, and after any death that ends a stable life, in seconds.
    base_s: float
    #: Longest wait, in seconds.
    max_s: float
    #: A life at least this long (seconds) resets the wait to ``base_s``.
    stable_after_s: float
    #: The wait given after the last death; None before the first.
    _last_s: float | None = field(default=None, init=False)

    def after_death(self, lived_s: float) -> float:
        """The wait, in seconds, before restarting a worker that died after ``lived_s``."""
        # Doubling the capped wait, not computing base * 2**deaths: that overflows a float
        # after ~1000 quick deaths, eight hours into a crash loop at the default cap.
        if self._last_s is None or lived_s >= self.stable_after_s:
            wait = self.base_s
        else:
            wait = 2 * self._last_s
        self._last_s = min(self.max_s, wait)
        return self._last_s


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with SO_REUSEPORT; port 0 lets the
    kernel pick a free one. While it is bound no other user's process can take the port, and
    workers binding it with SO_REUSEPORT still can. Raises OSError if the port is in use, even
    by another SO_REUSEPORT server (which would otherwise silently share our traffic)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    if port != 0:
        with socket.socket(family, kind, proto) as probe:  # without SO_REUSEPORT: exclusive
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            probe.bind(address)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


async def first_set(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class Supervisor:
    """Runs :class:`SupervisorConfig`'s workers until a signal; see the module docstring."""

    def __init__(self, config: SupervisorConfig) -> None:
        if config.workers < 1:
            raise ValueError("workers must be >= 1")
        self.config = config
        self.port = 0
        secret = config.scrape_secret
        self.metrics = WorkerMetrics(
            config.workers, fetch=lambda url, timeout_s: fetch_metrics(url, timeout_s, secret))
        self._procs: list[asyncio.subprocess.Process | None] = [None] * config.workers
        self._ready: set[int] = set()
        #: Set once every worker has been serving (stays set across restarts).
        self.all_ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._signal = signal.SIGTERM
        self._killed = False
        self.tls: CertificateReloader | None = None
        #: Workers to send SIGHUP to once they serve (they were starting when it came).
        self._hangup_pending: set[int] = set()
        self._reloads: set[asyncio.Task[bool]] = set()

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Begin a graceful shutdown, forwarding ``sig`` to the workers (idempotent)."""
        if not self._stop.is_set():
            self._signal = sig
            self._stop.set()

    def hangup(self) -> None:
        """SIGHUP: reload the merged /metrics' certificates and have every worker reload its
        own (a worker not serving yet gets the signal once it does)."""
        if self.tls is not None:
            task = asyncio.get_running_loop().create_task(self.tls.reload())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
        for worker, proc in enumerate(self._procs):
            if proc is None or proc.returncode is not None:
                continue
            if worker in self._ready:
                proc.send_signal(signal.SIGHUP)
            else:
                self._hangup_pending.add(worker)

    async def run(self) -> int:
        """Start the workers, serve until a signal, stop them; returns the exit status."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        http = None
        reserved = None
        failures: list[Exception] = []
        try:
            try:
                self.tls = open_transport(cfg.tls, [cfg.host], insecure=cfg.insecure)
            except (BindRefused, TlsError) as exc:
                log.error("%s", exc)
                return 2
            try:
                reserved = reserve_port(cfg.host, cfg.grpc_port)
                self.port = reserved.getsockname()[1]
                if cfg.metrics_port is not None:
                    registry = CollectorRegistry(auto_describe=False)
                    registry.register(self.metrics)
                    http = self._serve_metrics(registry)
            except OSError as exc:  # a port in use: say which, no traceback
                what = "/metrics" if reserved is not None else "gRPC"
                port = cfg.grpc_port if reserved is None else cfg.metrics_port
                log.error("cannot serve %s on %s:%s: %s", what, cfg.host, port, exc)
                return 1
            try:
                await self._supervise(http)
            except* WorkerStartError as group:
                failures.extend(group.exceptions)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if reserved is not None:
                reserved.close()
            if http is not None:
                http.close()
            self.metrics.close()
        for failure in failures:
            log.error("%s", failure)
        return 1 if failures or self._killed else 0

    def _serve_metrics(self, registry: CollectorRegistry) -> MetricsEndpoint:
        assert self.config.metrics_port is not None
        tls = self.tls
        endpoint = MetricsEndpoint(registry, self.config.host, self.config.metrics_port,
                                   None if tls is None else tls.material.http_context,
                                   self.config.metrics_check)  # authz: ops scope
        if tls is not None:
            tls.on_reload(lambda material: endpoint.replace_context(material.http_context))
        return endpoint

    async def _supervise(self, http: MetricsEndpoint | None) -> None:
        cfg = self.config
        async with asyncio.TaskGroup() as tg:
            slots = [tg.create_task(self._run_slot(k), name=f"sluice-worker-{k}")
                     for k in range(cfg.workers)]
            await first_set(self.all_ready, self._stop)
            if not self._stop.is_set():
                print(f"sluice: gRPC listening on {cfg.host}:{self.port}", flush=True)
                if http is not None:
                    print(f"sluice: metrics on {http.scheme}://{cfg.host}:{http.port}/metrics",
                          flush=True)
                log.info("%d workers serving on port %d", cfg.workers, self.port)
            await self._stop.wait()
            await self._shutdown(slots)

    async def _shutdown(self, slots: list[asyncio.Task[None]]) -> None:
        cfg = self.config
        log.info("signal received; stopping %d workers (grace %.1fs)",
                 cfg.workers, cfg.shutdown_grace_s)
        for proc in self._procs:
            if proc is not None and proc.returncode is None:
                proc.send_signal(self._signal)
        _done, pending = await asyncio.wait(slots, timeout=cfg.shutdown_grace_s + cfg.kill_margin_s)
        if pending:
            self._killed = True
            for k, proc in enumerate(self._procs):
                if proc is not None and proc.returncode is None:
                    log.error("worker %d (pid %d) still running; killing it", k, proc.pid)
                    proc.kill()

    async def _spawn(self, worker: int) -> asyncio.subprocess.Process:
        argv = list(self.config.worker_argv(worker, self.port))
        env = None
        if self.config.scrape_secret is not None:  # authz: never on a command line
            env = {**os.environ, SCRAPE_SECRET_ENV: self.config.scrape_secret}
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT, env=env,
        )
        self._procs[worker] = proc
        if self._stop.is_set():  # the signal was forwarded while this one was starting
            proc.send_signal(self._signal)
        return proc

    async def _run_slot(self, worker: int) -> None:
        """Keep worker slot ``worker`` filled until shutdown."""
        cfg = self.config
        backoff = RestartBackoff(cfg.restart_backoff_s, cfg.max_restart_backoff_s,
                                 cfg.stable_after_s)
        while True:
            proc = await self._spawn(worker)
            started = time.monotonic()
            try:
                ready = await self._watch(worker, proc)
                code = await proc.wait()
            finally:
                if proc.returncode is None:  # cancelled: the start failed elsewhere
                    proc.kill()
                    await proc.wait()
                self._procs[worker] = None
                self._ready.discard(worker)  # its replacement is not serving yet
                self.metrics.worker_exited(worker)
            if self._stop.is_set():
                if code != 0:
                    log.warning("worker %d (pid %d) exited with status %d", worker, proc.pid, code)
                return
            if not self.all_ready.is_set():
                raise WorkerStartError(
                    f"worker {worker} (pid {proc.pid}) exited with status {code} "
                    f"before {'all workers were' if ready else 'it was'} serving")
            lived = time.monotonic() - started
            delay = backoff.after_death(lived)
            log.error("worker %d (pid %d) exited with status %d after %.1fs; restarting in "
                      "%.1fs", worker, proc.pid, code, lived, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            self.metrics.worker_restarted()

    async def _watch(self, worker: int, proc: asyncio.subprocess.Process) -> bool:
        """Read the worker's stdout until it closes: take its "listening" and "metrics" lines
        (the worker is ready after both, or after the first when metrics are off), pass any
        other line on to our stdout. Returns whether the worker became ready."""
        assert proc.stdout is not None
        want_metrics = self.config.metrics_port is not None
        listening = False
        ready = False
        url: str | None = None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if not ready and _LISTENING.match(line):
                listening = True
                ready = not want_metrics
            elif not ready and listening and (match := _METRICS.match(line)):
                ready = True
                url = match.group(1)
            else:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                continue
            if ready:
                self.metrics.worker_ready(worker, url)
                self._ready.add(worker)
                if worker in self._hangup_pending:  # SIGHUP came while it started
                    self._hangup_pending.discard(worker)
                    proc.send_signal(signal.SIGHUP)
                if len(self._ready) == self.config.workers:
                    self.all_ready.set()
        return ready
