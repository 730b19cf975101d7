"""A real Sluice server on its own event loop in a daemon thread, for tests and GPU checks.

Sync clients (tritonclient.grpc, clients.Client) and async ones (in a test's own loop) reach it
over real TCP alike. No pytest here: tests/gpu runs without this repository's conftest.
"""

from __future__ import annotations

import asyncio
import threading
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

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro, timeout: float = 60.0):
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace_s: float = 5.0) -> None:
        self.call(self.server.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(config: ServerConfig, start_timeout_s: float = 120.0) -> RunningServer:
    """Start ``config`` on a fresh loop in a daemon thread; returns once it is serving."""
    loop = asyncio.new_event_loop()
    started: Future[Server] = Future()

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            server = Server(config)
            try:
                await server.start()
            except BaseException as exc:
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
    server = started.result(start_timeout_s)
    return RunningServer(server, loop, thread)
