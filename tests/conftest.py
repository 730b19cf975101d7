"""Shared fixtures: real Sluice servers on ephemeral ports.

A server runs on its own event loop in a background thread, so sync clients (tritonclient.grpc,
clients.Client) and async ones (in the test's own loop) reach it over real TCP alike.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.app import BUNDLED_REPOSITORY, Server
from server.config import ServerConfig


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


def start_server(config: ServerConfig) -> RunningServer:
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
    server = started.result(120)
    return RunningServer(server, loop, thread)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A private, writable copy of the bundled repository."""
    target = tmp_path / "models"
    shutil.copytree(
        BUNDLED_REPOSITORY, target, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    return target


@pytest.fixture(scope="session")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server over the bundled repository, shared by tests that only read."""
    running = start_server(ServerConfig(
        model_repository=BUNDLED_REPOSITORY, grpc_port=0, metrics_port=0,
        # Deployment state never goes into the git tree.
        state_dir=tmp_path_factory.mktemp("bundled-state"),
    ))
    yield running
    running.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Factory for servers with a custom config; each is stopped after the test. Each gets its
    own deployment state directory under ``tmp_path`` unless ``state_dir`` is given (pass the
    same one to a second server to see state survive a restart)."""
    servers: list[RunningServer] = []

    def factory(repository: Path, **overrides) -> RunningServer:
        overrides.setdefault("grpc_port", 0)
        overrides.setdefault("metrics_port", None)
        # A dot name: tests often use tmp_path itself as the repository, which skips dot dirs.
        overrides.setdefault("state_dir", tmp_path / f".sluice-state-{len(servers)}")
        running = start_server(ServerConfig(model_repository=repository, **overrides))
        servers.append(running)
        return running

    yield factory
    for running in servers:
        if running.thread.is_alive():
            running.stop()
