"""What the server checks and reads before it starts: whether a port is free, the error that
stops a start, and a model's declared deployment (moved out of :mod:`sluice.server.app`)."""

from __future__ import annotations

import socket
from pathlib import Path

from sluice.server.config.deployment_file import read_deployment
from sluice.server.errors import ModelLoadError
from sluice.server.rollout.deployment import DeploymentState


def port_free(host: str, port: int) -> bool:
    """Whether a listening socket could be bound on ``host:port`` now (SO_REUSEADDR, as gRPC
    binds: a port held only by connections in TIME_WAIT counts as free)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return True  # let gRPC report what it makes of the address
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


class StartError(Exception):
    """The server cannot start as configured; the message says why and which flag to change.
    ``usage``: the command line asked for something impossible (exit status 2, else 1)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def declared_state(model_dir: Path) -> tuple[DeploymentState, str] | None:
    """A model's deployment.yaml as the state it declares, with the file's sha256; None when
    there is none. Blocking (the router calls it on a thread)."""
    found = read_deployment(model_dir)
    if found is None:
        return None
    declared, digest = found
    try:
        return DeploymentState.from_json(declared), digest
    except ValueError as exc:  # the reader checked the file; this is a disagreement of ours
        raise ModelLoadError(f"{model_dir.name}/deployment.yaml: {exc}") from None
