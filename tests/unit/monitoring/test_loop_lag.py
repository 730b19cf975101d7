"""The event-loop lag probe: a blocked loop shows in the histogram at about the block's length."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sluice.server.monitoring.loop_lag import LAG_BUCKETS, LoopLag, LoopLagCollector


def _beyond(lag: LoopLag, bound: float) -> int:
    return sum(lag.lags.counts[LAG_BUCKETS.index(bound) + 1:])


def test_a_blocked_loop_is_observed_as_lag() -> None:
    lag = LoopLag(period_s=0.01)

    async def main() -> None:
        lag.start()
        await asyncio.sleep(0.05)  # a few quiet periods first
        time.sleep(0.15)  # noqa: ASYNC251 (the point: the probe wakes ~140 ms late)
        await asyncio.sleep(0.05)
        await lag.stop()

    asyncio.run(main())
    assert sum(lag.lags.counts) >= 5
    assert _beyond(lag, 0.1) >= 1  # the stall, seen at nearly its length
    assert lag.lags.total >= 0.13


def test_observations_land_in_their_buckets_and_reach_metrics() -> None:
    lag = LoopLag()
    for seconds in (0.0003, 0.0007, 0.003, -0.001, 2.0):  # a negative lag counts as none
        lag.observe(seconds)
    counts = lag.lags.counts
    assert counts[0] == 2 and counts[1] == 1 and counts[3] == 1
    assert counts[-1] == 1
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoopLagCollector(lag))
    samples = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode())
               for s in f.samples}
    assert samples["sluice_event_loop_lag_seconds_bucket", (("le", "0.0005"),)] == 2
    assert samples["sluice_event_loop_lag_seconds_bucket", (("le", "0.005"),)] == 4
    assert samples["sluice_event_loop_lag_seconds_bucket", (("le", "+Inf"),)] == 5
    assert abs(samples["sluice_event_loop_lag_seconds_sum", ()] - 2.004) < 1e-9
