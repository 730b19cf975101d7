"""Deployment changes under ``sluice serve --workers 2``: an Admin RPC lands on one worker (the
kernel picks a process per connection), and every worker serves the change within a second.

The model "m" has versions 1 and 2; version v answers x + 100 * v, so every response proves
which version computed it.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from sluice.clients import Client
from sluice.clients.admin import AdminClient
from tests.support.onnx_models import write_model
from tests.support.routing_models import CONFIG, X, add_model
from tests.support.supervised import Supervised, scrape

pytestmark = pytest.mark.timeout(300)

# A new channel per client is not enough: gRPC shares one TCP connection between the channels of
# a process unless told otherwise, and SO_REUSEPORT spreads connections, not requests.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CONNECTIONS = 40


def answered_by(address: str) -> int:
    """The version that answered one request made on a connection of its own."""
    with Client(address, timeout=30, channel_options=_OWN_CONNECTION) as client:
        out = client.infer("m", {"IN_x": X})["OUT_x"]
    version = round(float(out[0, 0] - X[0, 0]) / 100)
    np.testing.assert_array_equal(out, X + 100 * version)
    return version


def change_routes(address: str, weights: dict[str | int, float]) -> None:
    with AdminClient(address, caller="test", channel_options=_OWN_CONNECTION) as admin:
        assert [(r["version"], r["weight"]) for r in admin.set_routes("m", weights)["routes"]] \
            == [(int(v), float(w)) for v, w in weights.items()]


def settle(address: str, version: int, timeout_s: float = 8.0) -> None:
    """Wait until 30 fresh connections in a row are answered by ``version``: the kernel may
    send a short run of connections all to the worker that made the change, so the streak is
    long, and it starts after two of the followers' polls (0.5 s each)."""
    time.sleep(1.0)
    deadline, streak = time.monotonic() + timeout_s, 0
    while streak < 30:
        assert time.monotonic() < deadline, f"workers still not all on version {version}"
        streak = streak + 1 if answered_by(address) == version else 0


def workers_serving_m(url: str) -> set[str]:
    return {m.group(1) for key in scrape(url)
            if key.startswith('sluice_latency_quantile_seconds{model="m"')
            and (m := re.search(r'worker="(\d+)"', key))}


@pytest.fixture
def supervised(tmp_path):
    repo = tmp_path / "models"
    for version in (1, 2):
        write_model(repo, "m", add_model(100.0 * version), CONFIG, version=version)
    server = Supervised("--model-repository", str(repo), "--state-dir", str(tmp_path / "state"))
    try:
        yield server
    finally:
        server.close()


def test_a_route_change_on_one_worker_is_served_by_every_worker(supervised, tmp_path):
    address, url = supervised.start()
    assert {answered_by(address) for _ in range(10)} == {2}  # no deployment: the newest

    change_routes(address, {"1": 1})
    settle(address, 1)
    assert [answered_by(address) for _ in range(CONNECTIONS)] == [1] * CONNECTIONS

    change_routes(address, {"2": 1})  # a new connection: this may land on the other worker
    settle(address, 2)
    assert [answered_by(address) for _ in range(CONNECTIONS)] == [2] * CONNECTIONS
    # both workers answered (so both followed both changes), and each change was audited once
    assert workers_serving_m(url) == {"0", "1"}
    audit = (tmp_path / "state" / "audit.jsonl").read_text().splitlines()
    assert len(audit) == 2
