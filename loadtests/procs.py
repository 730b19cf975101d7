"""Subprocesses of the benchmark: servers (Sluice, the ceiling) and load generator processes.

Every process runs with the repository root as working directory and the same interpreter as
the benchmark. A server is stopped with SIGTERM (then SIGKILL after a grace period) by its own
pid; nothing is ever killed by name.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests.models import ROOT, InputSpec
from sluice.clients.auth import with_token
from sluice.clients.tls import open_channel
from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc

_LISTENING = re.compile(r"gRPC listening on (\S+):(\d+)\s*$")


def checkout_env() -> dict[str, str]:
    """``os.environ`` for a subprocess that must run this checkout: its ``sluice`` (the link in
    ``.ci/pythonpath``, see tests/support/checkout.py) and its ``loadtests`` first on
    PYTHONPATH, ahead of any installed Sluice."""
    first = [str(ROOT / ".ci" / "pythonpath"), str(ROOT)]
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in first]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(first + rest))


def terminate(proc: subprocess.Popen, grace_s: float) -> int:
    """SIGTERM ``proc`` if it still runs, wait up to ``grace_s``, then SIGKILL; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServerProcess:
    """A gRPC server subprocess that prints ``... gRPC listening on HOST:PORT`` once it listens
    and is ready once its ServerReady says so (Sluice listens before its models load).

    Use as a context manager; ``target`` is ``HOST:PORT``, ``pid`` the server's own pid (the
    command is the interpreter itself, no shell, or ``wrapper`` running it in its own process,
    as valgrind does), ``rss()`` its resident memory in bytes.
    """

    def __init__(
        self, name: str, args: list[str], *, start_timeout_s: float = 60.0,
        credentials: grpc.ChannelCredentials | None = None, token: str | None = None,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        #: What a client needs to reach it: TLS credentials (None: plaintext), a bearer token.
        self.credentials, self.token = credentials, token
        self._args = [*wrapper, sys.executable, *args]  # wrapper: e.g. valgrind, which execs
        self._start_timeout_s = start_timeout_s
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        self._proc: subprocess.Popen[str] | None = None
        self.target = ""
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> ServerProcess:
        self._proc = subprocess.Popen(
            self._args, cwd=ROOT, env=checkout_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self.target:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(
                    f"{self.name}: not listening after {self._start_timeout_s}s"
                ) from None
            if line is None:
                tail = self.stderr_tail()
                self.stop()
                raise RuntimeError(f"{self.name} exited before listening: {tail}")
            match = _LISTENING.search(line)
            if match:
                self.target = f"{match.group(1)}:{match.group(2)}"
        if not _wait_ready(self.target, deadline, self._proc, self.credentials, self.token):
            tail = self.stderr_tail()
            self.stop()
            raise RuntimeError(f"{self.name}: not ready after {self._start_timeout_s}s: {tail}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL. Returns the exit code."""
        if self._proc is None or self.exit_code is not None:
            return self.exit_code
        self.exit_code = terminate(self._proc, grace_s)
        self._stderr.close()
        return self.exit_code


def _wait_ready(target: str, deadline: float, proc: subprocess.Popen,
                credentials: grpc.ChannelCredentials | None = None,
                token: str | None = None) -> bool:
    """Whether ``target`` answered ServerReady true before ``deadline`` (monotonic) while
    ``proc`` ran."""
    with with_token(open_channel(target, (), credentials), token) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=1.0).ready:
                    return True
            except grpc.RpcError:
                pass  # not answering yet
            time.sleep(0.05)
    return False


@dataclass
class LoadResult:
    """One measured point: what was sent, and what came back inside the window."""

    target: str
    model: str
    mode: str
    concurrency: int
    batch: int
    procs: int
    duration_s: float
    count: int
    errors: int
    first_error: str
    req_s: float
    rows_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


def _shares(total: int, parts: int) -> list[int]:
    base, rest = divmod(total, parts)
    shares = [base + (1 if i < rest else 0) for i in range(parts)]
    return [share for share in shares if share > 0]


def _loadgen_args(
    target: str, model: str, inputs: tuple[InputSpec, ...], batch: int, concurrency: int,
    mode: str, seed: int,
) -> list[str]:
    args = [
        sys.executable, "-m", "loadtests.loadgen", "--target", target, "--model", model,
        "--batch", str(batch), "--concurrency", str(concurrency), "--mode", mode,
        "--seed", str(seed),
    ]
    for spec in inputs:
        args += ["--input", spec.to_arg()]
    return args


def _last_json(stdout: str, who: str, stderr: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            if "fatal" in result:
                raise RuntimeError(f"{who}: {result['fatal']}")
            return result
    raise RuntimeError(f"{who}: no result; stderr: {stderr[-2000:]}")


def run_load(
    *, label: str, target: str, model: str, inputs: tuple[InputSpec, ...], batch: int,
    concurrency: int, mode: str = "unary", procs: int = 1, duration_s: float, warmup_s: float,
    slo_ms: float | None = None, client_args: tuple[str, ...] = (),
) -> LoadResult:
    """Measure one point with ``procs`` generator processes sharing ``concurrency`` workers.

    All processes start measuring at the same monotonic instant, after they are connected and
    have warmed up for ``warmup_s``; latencies are merged before taking percentiles. With
    ``slo_ms``, ``extra["good_req_s"]`` is the OK answers within it per second (goodput).
    ``client_args`` go to every generator (its TLS and token flags).
    """
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        children: list[tuple[subprocess.Popen[str], Path]] = []
        try:
            for index, share in enumerate(_shares(concurrency, procs)):
                path = Path(tmp) / f"lat{index}.npy"
                args = _loadgen_args(target, model, inputs, batch, share, mode, index)
                args += ["--duration", str(duration_s), "--latencies", str(path), *client_args]
                child = subprocess.Popen(
                    args, cwd=ROOT, env=checkout_env(), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
                children.append((child, path))
            for child, _ in children:
                assert child.stdout is not None
                first = child.stdout.readline().strip()
                if first != "ready":
                    out, err = child.communicate(timeout=30)
                    said = (first + "\n" + out + err).strip()
                    raise RuntimeError(f"{label}: load generator failed to start: {said[-2000:]}")
            start = time.monotonic() + warmup_s
            for child, _ in children:
                assert child.stdin is not None
                child.stdin.write(f"{start!r}\n")
                child.stdin.flush()  # communicate() below closes it
            summaries, latencies = [], []
            for child, path in children:
                out, err = child.communicate(timeout=warmup_s + duration_s + 60)
                summaries.append(_last_json(out, label, err))
                latencies.append(np.load(path))
        finally:
            for child, _ in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    merged = np.concatenate(latencies) if latencies else np.empty(0)
    count = int(merged.size)
    p50, p95, p99 = (np.percentile(merged, [50, 95, 99]) * 1e3) if count else (np.nan,) * 3
    req_s = count / duration_s
    extra: dict[str, Any] = {"total": sum(int(s.get("total", 0)) for s in summaries)}
    if slo_ms is not None:
        extra["good_req_s"] = int(np.count_nonzero(merged <= slo_ms / 1e3)) / duration_s
    return LoadResult(
        target=label, model=model, mode=mode, concurrency=concurrency, batch=batch,
        procs=len(children), duration_s=duration_s, count=count,
        errors=sum(s["errors"] for s in summaries),
        first_error=next((s["first_error"] for s in summaries if s["first_error"]), ""),
        req_s=req_s, rows_s=req_s * batch,
        p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99),
        extra=extra,
    )


def send_count(
    *, target: str, model: str, inputs: tuple[InputSpec, ...], count: int, concurrency: int,
    mode: str = "unary",
) -> dict[str, Any]:
    """Send ``count`` batch-1 requests from one generator process; returns its summary."""
    args = _loadgen_args(target, model, inputs, 1, concurrency, mode, 0)
    args += ["--count", str(count)]
    done = subprocess.run(
        args, cwd=ROOT, env=checkout_env(), capture_output=True, text=True, timeout=600, check=False
    )
    return _last_json(done.stdout, f"{count} {model} requests", done.stderr)
