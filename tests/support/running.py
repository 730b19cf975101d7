"""A real Sluice server on its own event loop in a daemon thread, for tests and GPU checks.

Sync clients (tritonclient.grpc, clients.Client) and async ones (in a test's own loop) reach it
over real TCP alike. No pytest here: tests/gpu runs without this repository's conftest.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from sluice.server.app import Server
from sluice.server.config.settings import ServerConfig


@dataclass
class RunningServer:
    """A started server and the loop thread it runs on."""

    server: Server
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    #: Done when ``Server.start`` has returned: every startup model loaded or failed.
    started: Future[Server]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro, timeout: float = 60.0):
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Wait until the server's startup models have loaded (or failed)."""
        self.started.result(timeout_s)

    def stop(self, grace_s: float = 5.0) -> None:
        self.call(self.server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(
    config: ServerConfig, start_timeout_s: float = 120.0, *, loaded: bool = True,
    build: Callable[[ServerConfig], Server] = Server,
) -> RunningServer:
    """Start ``config`` on a fresh loop in a daemon thread; returns once it is serving every
    startup model, or, with ``loaded=False``, once it listens (its models may still load)."""
    loop = asyncio.new_event_loop()
    listening: Future[Server] = Future()
    started: Future[Server] = Future()

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            server = build(config)
            try:
                await server.start(lambda: listening.set_result(server))
            except BaseException as exc:
                if not listening.done():
                    listening.set_exception(exc)
                started.set_exception(exc)
                return
            started.set_result(server)

        loop.run_until_complete(boot())
        if started.exception() is None:
            loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=main, name="sluice-test-server", daemon=True)
    thread.start()
    server = (started if loaded else listening).result(start_timeout_s)
    return RunningServer(server, loop, thread, started)
