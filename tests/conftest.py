"""Shared fixtures: real Sluice servers on ephemeral ports.

A server runs on its own event loop in a background thread, so sync clients (tritonclient.grpc,
clients.Client) and async ones (in the test's own loop) reach it over real TCP alike.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sluice.server.app import BUNDLED_REPOSITORY
from sluice.server.config.settings import ServerConfig
from tests.support.running import RunningServer, start_server


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
