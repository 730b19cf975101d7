"""``sluice serve --workers 2`` as users run it: one port, one /metrics, restarts, clean exit."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest
import tritonclient.grpc as tc

from sluice.server.workers.supervisor import Supervisor, SupervisorConfig, reserve_port
from tests.support.supervised import Supervised, scrape

pytestmark = pytest.mark.timeout(300)

# Each client its own connection: gRPC otherwise shares one TCP connection between the channels
# of a process, and SO_REUSEPORT spreads connections, not requests.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def supervised() -> Iterator[Supervised]:
    server = Supervised()
    try:
        yield server
    finally:
        server.close()


def add_sub_calls(address: str, clients: int, calls: int) -> int:
    """``clients`` threads, each with its own connection, make ``calls`` add_sub requests and
    check every answer; returns the number of requests answered correctly."""
    done: list[int] = []
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            with tc.InferenceServerClient(address, channel_args=_OWN_CONNECTION) as c:
                for _ in range(calls):
                    a, b = (rng.standard_normal((1, 16)).astype(np.float32) for _ in range(2))
                    inputs = [tc.InferInput("INPUT0", [1, 16], "FP32"),
                              tc.InferInput("INPUT1", [1, 16], "FP32")]
                    inputs[0].set_data_from_numpy(a)
                    inputs[1].set_data_from_numpy(b)
                    result = c.infer("add_sub", inputs, client_timeout=30)
                    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
                    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
                    done.append(1)
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    return len(done)


SUCCESS = 'sluice_requests_total{model="add_sub",outcome="success",version="1"}'


def served_by(metrics: dict[str, float]) -> set[str]:
    """Workers whose window has add_sub latencies: those that answered add_sub requests."""
    return {m.group(1) for key in metrics
            if key.startswith('sluice_latency_quantile_seconds{model="add_sub"')
            and (m := re.search(r'worker="(\d+)"', key))}


def test_two_workers_share_one_port_one_metrics_scrape_and_exit_0(supervised):
    address, url = supervised.start()
    workers = supervised.workers()
    assert len(workers) == 2
    assert int(address.rsplit(":", 1)[1]) > 0

    sent = add_sub_calls(address, clients=16, calls=25)
    assert sent == 400

    metrics = scrape(url)
    assert metrics["sluice_workers"] == 2
    assert metrics['sluice_worker_up{worker="0"}'] == 1
    assert metrics['sluice_worker_up{worker="1"}'] == 1
    assert metrics["sluice_worker_restarts_total"] == 0
    # one scrape counts every request, whichever worker answered it ...
    assert metrics[SUCCESS] == sent
    assert metrics['sluice_request_duration_seconds_count{model="add_sub",version="1"}'] == sent
    # ... and both workers answered some (16 connections, spread by the kernel)
    assert served_by(metrics) == {"0", "1"}

    supervised.proc.send_signal(signal.SIGTERM)
    assert supervised.proc.wait(60) == 0
    psutil.wait_procs(workers, timeout=10)
    assert not any(w.is_running() for w in workers)
    supervised.close()
    assert sum("gRPC listening on" in line for line in supervised.lines) == 1


def test_a_killed_worker_is_restarted_and_service_continues(supervised):
    address, url = supervised.start()
    assert add_sub_calls(address, clients=8, calls=10) == 80
    assert scrape(url)[SUCCESS] == 80
    victim, survivor = supervised.workers()
    os.kill(victim.pid, signal.SIGKILL)

    deadline = time.monotonic() + 120
    while True:
        metrics = scrape(url)  # never fails, even while a worker is down
        restarted = {key: metrics[key] for key in (
            "sluice_worker_restarts_total", "sluice_workers",
            'sluice_worker_up{worker="0"}', 'sluice_worker_up{worker="1"}')}
        if list(restarted.values()) == [1, 2, 1, 1]:
            break
        assert time.monotonic() < deadline, restarted
        time.sleep(0.2)
    # the dead worker's counts as of the last scrape are kept: the total does not go backwards
    assert metrics[SUCCESS] == 80
    workers = supervised.workers()
    assert len(workers) == 2 and survivor in workers and victim.pid not in {w.pid for w in workers}
    assert add_sub_calls(address, clients=8, calls=10) == 80
    assert scrape(url)[SUCCESS] == 160

    # a supervisor that dies without a word takes its workers with it (their stdin closes)
    supervised.proc.kill()
    supervised.proc.wait(30)
    _gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive


def test_a_worker_that_cannot_start_fails_the_start(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sluice.server", "serve", "--workers", "2", "--grpc-port", "0",
         "--metrics-port", "-1", "--model-repository", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "gRPC listening" not in proc.stdout
    assert "before it was serving" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "sluice.server", "serve", "--workers", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--workers" in bad.stderr


# The supervisor alone, over stand-in workers that start in milliseconds.

def _stand_in(script: str, **overrides) -> SupervisorConfig:
    prelude = "import os, signal, sys, time\nprint('sluice: gRPC listening on x', flush=True)\n"
    return SupervisorConfig(**{
        "workers": 2, "host": "127.0.0.1", "grpc_port": 0, "metrics_port": None,
        "worker_argv": lambda worker, port: [sys.executable, "-c", prelude + script],
        "shutdown_grace_s": 0.2, "kill_margin_s": 0.3, "restart_backoff_s": 0.05,
        **overrides,
    })


def _restarts(supervisor: Supervisor) -> float:
    families = {f.name: f for f in supervisor.metrics.collect()}
    return families["sluice_worker_restarts"].samples[0].value


# A stand-in worker that notes its own start and exit instants in a journal, then lives as
# long as LIVES_S says for its place in the journal (past the end: until it is stopped).
# CLOCK_MONOTONIC is one clock for every process, so the test can subtract the instants.
_JOURNALED = """
def note(event):
    with open(JOURNAL, "a") as f:
        f.write(f"{event} {os.getpid()} {time.monotonic()!r}\\n")
with open(JOURNAL) as f:
    life = sum(line.startswith("start") for line in f)
note("start")
if life >= len(LIVES_S):
    time.sleep(60)
time.sleep(LIVES_S[life])
note("exit")
sys.exit(3)
"""

_RESTARTING = re.compile(
    r"^worker 0 \(pid (\d+)\) exited with status 3 after \S+s; restarting in (\S+)s$")


async def test_crashing_workers_are_restarted_with_backoff(tmp_path, caplog):
    # Lives 0-3 die at once: waits 0.1, 0.2, 0.4, then 0.4 (the cap, not 0.8). Life 4 outlives
    # stable_after_s (2 s), so its death waits 0.1 again; life 5 dies at once: 0.2. Life 6 stays.
    # A short life must stay under 2 s for this schedule: a 20x margin over a Python start.
    lives_s = (0.0, 0.0, 0.0, 0.0, 2.5, 0.0)
    scheduled_s = [0.1, 0.2, 0.4, 0.4, 0.1, 0.2]
    journal = tmp_path / "journal"
    journal.touch()
    supervisor = Supervisor(_stand_in(
        f"JOURNAL = {str(journal)!r}\nLIVES_S = {lives_s!r}\n" + _JOURNALED,
        workers=1, restart_backoff_s=0.1, max_restart_backoff_s=0.4, stable_after_s=2.0))
    run = asyncio.create_task(supervisor.run())
    for _ in range(1200):
        if run.done() or journal.read_text().count("start") > len(lives_s):
            break
        await asyncio.sleep(0.05)
    restarts = _restarts(supervisor)
    supervisor.request_stop()
    assert await asyncio.wait_for(run, 60) == 0

    notes = [line.split() for line in journal.read_text().splitlines()]
    starts = [(int(pid), float(t)) for event, pid, t in notes if event == "start"]
    exits = [(int(pid), float(t)) for event, pid, t in notes if event == "exit"]
    assert len(starts) == len(lives_s) + 1 and len(exits) == len(lives_s), notes
    assert restarts == len(lives_s)
    # what the supervisor says it waits, each after the death of the worker the journal names
    said = [m.groups() for r in caplog.records
            if r.name == "sluice.server.workers.supervisor"
            and (m := _RESTARTING.match(r.getMessage()))]
    assert [int(pid) for pid, _ in said] == [pid for pid, _ in exits]
    assert [float(wait) for _, wait in said] == scheduled_s, notes
    # ... and that it did wait: each worker's exit to the next one's start spans the wait plus
    # the reaping, spawn and Python start between them, so the wait is a lower bound
    gaps_s = [start - died for (_, died), (_, start) in zip(exits, starts[1:], strict=True)]
    assert all(gap >= wait for gap, wait in zip(gaps_s, scheduled_s, strict=True)), gaps_s


async def test_a_worker_that_ignores_the_signal_is_killed_after_the_grace():
    supervisor = Supervisor(_stand_in("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                      "time.sleep(60)"))
    run = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(supervisor.all_ready.wait(), 60)
    supervisor.request_stop()
    started = time.monotonic()
    assert await asyncio.wait_for(run, 30) == 1
    assert 0.4 < time.monotonic() - started < 10


def test_the_port_is_reserved_for_workers_and_a_busy_port_is_refused():
    reserved = reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    with reserved, socket.socket() as worker:  # a worker joins the reserved port
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        # another server, even one using SO_REUSEPORT itself, may not join it
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", port)
        busy = subprocess.run(
            [sys.executable, "-m", "sluice.server", "serve", "--workers", "2", "--grpc-port",
             str(port),
             "--metrics-port", "-1"], capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1 and f"cannot serve gRPC on 127.0.0.1:{port}" in busy.stderr
