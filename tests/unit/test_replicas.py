"""sluice.clients.replicas: the gRPC target a list of replicas becomes, the service config
every channel carries, and the retry rule for a draining replica (sluice.clients.retry)."""

from __future__ import annotations

import json
import random

import grpc
import pytest

from sluice.clients.errors import Overloaded
from sluice.clients.replicas import balancing_options, grpc_target, spreads
from sluice.clients.retry import RetryPolicy


def test_a_list_of_addresses_becomes_one_list_target_of_its_family() -> None:
    assert grpc_target(["10.0.0.7:8001", "10.0.0.8:8001"]) == "ipv4:10.0.0.7:8001,10.0.0.8:8001"
    assert grpc_target(["[::1]:8001", "[fd00::2]:9"]) == "ipv6:[::1]:8001,[fd00::2]:9"
    assert grpc_target(("127.0.0.1:1",)) == "ipv4:127.0.0.1:1"
    for text in ("127.0.0.1:8001", "dns:///sluice-headless:8001", "ipv4:127.0.0.1:1,127.0.0.1:2"):
        assert grpc_target(text) == text  # a string is gRPC's to read


@pytest.mark.parametrize(("addresses", "named"), [
    (["sluice:8001"], "'sluice:8001'"),            # a host name: dns:/// is the way
    (["10.0.0.7"], "'10.0.0.7'"),                  # no port
    (["10.0.0.7:0"], "'10.0.0.7:0'"),              # port out of range
    (["10.0.0.7:http"], "'10.0.0.7:http'"),
    (["::1:8001"], "'::1:8001'"),                  # IPv6 without brackets
    (["[10.0.0.7]:8001"], "'[10.0.0.7]:8001'"),    # IPv4 in brackets
])
def test_an_address_that_is_not_ip_and_port_is_refused_by_name(addresses, named) -> None:
    with pytest.raises(ValueError, match="dns:///") as info:
        grpc_target(addresses)
    assert named in str(info.value)


def test_an_empty_or_mixed_family_list_is_refused() -> None:
    with pytest.raises(ValueError, match="no replica"):
        grpc_target([])
    with pytest.raises(ValueError, match="mix IPv4 and IPv6"):
        grpc_target(["127.0.0.1:1", "[::1]:2"])


def test_which_targets_spread_over_replicas() -> None:
    assert spreads(["127.0.0.1:1", "127.0.0.1:2"])
    assert spreads("dns:///sluice-headless.prod.svc.cluster.local:8001")
    assert spreads("ipv4:127.0.0.1:1,127.0.0.1:2")
    assert not spreads(["127.0.0.1:1"])
    assert not spreads("127.0.0.1:8001")
    assert not spreads("ipv4:127.0.0.1:1")


def test_every_channel_balances_round_robin_and_watches_health_when_it_spreads() -> None:
    def config(target, health_check=None):
        [(key, value)] = balancing_options(target, health_check)
        assert key == "grpc.service_config"
        return json.loads(value)

    rr = [{"round_robin": {}}]
    assert config("127.0.0.1:8001") == {"loadBalancingConfig": rr}
    assert config("dns:///s:8001") == {"loadBalancingConfig": rr,
                                       "healthCheckConfig": {"serviceName": ""}}
    assert "healthCheckConfig" in config("127.0.0.1:8001", health_check=True)
    assert "healthCheckConfig" not in config(["127.0.0.1:1", "127.0.0.1:2"], health_check=False)


def _overloaded(reason: str, pushback_ms: int) -> Overloaded:
    return Overloaded(grpc.StatusCode.UNAVAILABLE, "shed", retry_after_ms=pushback_ms,
                      reason=reason)


@pytest.mark.parametrize("spread", [False, True])
def test_a_draining_pushback_is_waited_out_only_by_a_client_of_one_replica(spread) -> None:
    policy = RetryPolicy(3, 0.05, 2.0, rng=random.Random(7), clock=lambda: 0.0, spread=spread)
    call = policy.begin(None)
    call.time_left()
    wait = call.after_failure(_overloaded("draining", 1000))
    # One replica: at least the 1 s asked for (up to +20% jitter); several: the plain backoff
    # of a first retry, uniform(0, 0.05).
    assert (0.0 <= wait <= 0.05) if spread else (1.0 <= wait <= 1.2)
    call.time_left()
    # Any other shed reason is overload, which other replicas may share: its pushback holds.
    assert call.after_failure(_overloaded("queue_full", 1000)) >= 1.0
