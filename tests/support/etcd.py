"""A real etcd for tests: Debian's ``etcd`` binary (package ``etcd-server``) on 127.0.0.1, free
client and peer ports, a temporary data directory; stopped by its PID.

    etcd = start_etcd(tmp_path / "etcd")
    try:
        ... etcd.endpoint ...          # "127.0.0.1:PORT", for etcd://127.0.0.1:PORT/prefix
        etcd.stop()                    # an outage: the ports and data directory are kept
        etcd.restart()                 # the same ports and data, so clients reconnect
    finally:
        etcd.stop()

No pytest here: a test skips with :data:`MISSING` when :func:`find_binary` finds nothing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: Why a test skips where there is no binary (CI installs it: .ci/run).
MISSING = ("etcd not found on PATH or in /usr/bin: install Debian's etcd-server package "
           "(apt-get install etcd-server; .ci/run does this)")


def find_binary() -> str | None:
    """The path of the etcd server binary, or None."""
    found = shutil.which("etcd")
    if found is None and Path("/usr/bin/etcd").exists():
        found = "/usr/bin/etcd"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class EtcdServer:
    """One etcd member (see :func:`start_etcd`); :meth:`stop` and :meth:`restart` keep its
    ports and data directory, as an outage of a real member would."""

    binary: str
    directory: Path
    client_port: int
    peer_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of its client API (gRPC and the JSON gateway share it)."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def state_store(self, prefix: str = "sluice") -> str:
        """The ``--state-store`` value for this member and ``prefix``."""
        return f"etcd://{self.endpoint}/{prefix}"

    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start the process (the ports chosen at creation, the same data directory) and wait
        until it answers a read."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "etcd.log").open("ab")
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = subprocess.Popen(
            [self.binary, "--name", "test", "--data-dir", str(self.directory / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
             "--log-level", "warn", "--logger", "zap"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + ready_timeout_s
        while not self.answers():
            if self.process.poll() is not None:
                raise AssertionError(f"etcd exited ({self.process.returncode}): "
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd not answering after {ready_timeout_s}s; log: "
                                     f"{self.log_tail()}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """Whether a linearizable read succeeds now (the member is up and has a leader)."""
        request = urllib.request.Request(
            f"{self.url}/v3/kv/range", data=json.dumps({"key": "AA=="}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self) -> None:
        """SIGTERM to its PID, then SIGKILL if it has not exited within 10 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def restart(self, ready_timeout_s: float = 30.0) -> None:
        self.stop()
        self.start(ready_timeout_s)

    def log_tail(self, chars: int = 2000) -> str:
        log = self.directory / "etcd.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def start_etcd(directory: Path, *, binary: str | None = None,
               ready_timeout_s: float = 30.0) -> EtcdServer:
    """Start etcd with its data and log in ``directory`` on free loopback ports; returns once
    it answers. Raises FileNotFoundError (with :data:`MISSING`) when there is no binary."""
    binary = binary or find_binary()
    if binary is None:
        raise FileNotFoundError(MISSING)
    for _attempt in range(3):  # a port taken between the probe and the bind: other ones
        server = EtcdServer(binary, directory, free_port(), free_port())
        try:
            server.start(ready_timeout_s)
        except AssertionError:
            server.stop()
            if "address already in use" in server.log_tail():
                shutil.rmtree(directory / "data", ignore_errors=True)
                continue
            raise
        return server
    raise AssertionError("etcd found no free ports in 3 tries")
