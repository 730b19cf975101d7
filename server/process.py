"""One ``sluice serve`` process: serve until a signal says to stop.

SIGTERM and SIGINT drain and stop gracefully (exit status 0). SIGHUP reloads what can change
under a running server (the TLS certificates: :meth:`Server.reload`); its handler is installed
before anything is served, so a SIGHUP never takes the default action (exit), whether TLS is
on or not. A worker of ``--workers`` also stops when its stdin, a pipe from its supervisor,
reaches end of file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from sluice.server.app import Server, serve
from sluice.server.config.settings import ServerConfig
from sluice.server.heap import freeze_startup_heap
from sluice.server.workers.supervisor import first_set

log = logging.getLogger("sluice.server.app")  # the name these lines have always had


async def run_until_signal(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (exit status 0); reload the
    certificates on each SIGHUP (one reload at a time; signals during one coalesce)."""
    stop, hangup = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    if config.worker_id is not None:
        _stop_when_stdin_closes(loop, stop)

    def listening(server: Server) -> None:  # printed once, here (the supervisor reads them)
        print(f"sluice: gRPC listening on {config.host}:{server.port}", flush=True)
        endpoint = server.metrics.endpoint
        if endpoint is not None:
            host = config.metrics_host or config.host
            print(f"sluice: metrics on {endpoint.scheme}://{host}:{endpoint.port}/metrics",
                  flush=True)
        if server.rest is not None:  # REST (issue 17 item 1)
            print(f"sluice: HTTP listening on {server.rest.scheme}://{config.host}:"
                  f"{server.rest.port}", flush=True)

    async with serve(config, listening) as server:
        freeze_startup_heap()  # models loaded: what lives now lives as long as the process
        while not stop.is_set():
            await first_set(stop, hangup)
            if hangup.is_set() and not stop.is_set():
                hangup.clear()
                await server.reload()
        log.info("signal received; shutting down (grace %.1fs)", config.shutdown_grace_s)
    answered, failed = server.final_counts
    print(f"sluice: stopped; {answered} requests answered, {failed} refused or failed", flush=True)


def _stop_when_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """A worker's stdin is a pipe held by its supervisor: end of file means the supervisor is
    gone (even killed with SIGKILL), so the worker drains and exits instead of living on."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            stop.set()

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError):  # not a pipe (a file or /dev/null): nothing to watch
        log.warning("worker stdin is not a pipe; it will not notice its supervisor exit")
