"""One replica's fleet parts, as the composition root builds them for ``--state-store etcd://``.

    fleet = FleetReplica.open(config)            # StartError-free: raises StateStoreURLError
    router = Router(repository, fleet.store, ...)
    follower = fleet.follow(router, canary, metrics)
    ... await fleet.start() ... await fleet.close()

Owns the etcd store (and so the client), the follower, and the canary leadership; registers
``/metrics`` series (:class:`FleetCollector`):

- ``sluice_state_store_up{store="etcd"}``: 1 while etcd answers and the watch runs, else 0
  (the replica serves the last state it applied meanwhile);
- ``sluice_state_store_revision{store="etcd"}``: the etcd revision last applied here;
- ``sluice_canary_leader{store="etcd"}``: 1 on the replica driving the fleet's canaries;
- ``sluice_fleet_counters_up{store="etcd"}``, ``sluice_canary_gate_source_up{source}``: the
  canary gates' fleet numbers (:mod:`~sluice.server.fleet.fleet_counters`, or Prometheus with
  ``--metrics-source``: :mod:`~sluice.server.fleet.prom_gates`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.server.config.settings import ServerConfig
from sluice.server.fleet.etcd_follower import EtcdFollower
from sluice.server.fleet.etcd_store import EtcdDeploymentStore, EtcdLocation
from sluice.server.fleet.fleet_counters import (
    CounterPublisher,
    FleetCountersCollector,
    FleetEvidence,
    model_totals,
    new_replica_id,
)
from sluice.server.fleet.leadership import CanaryLeadership
from sluice.server.fleet.prom_gates import judge_with_prometheus
from sluice.server.metrics import Metrics
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.gate_evidence import LocalEvidence
from sluice.server.rollout.router import Router


class FleetReplica:
    """The fleet parts of one replica (see the module docstring)."""

    def __init__(self, store: EtcdDeploymentStore, *, lease_s: int,
                 catch_up_s: float = 10.0, counters_period_s: float = 1.0,
                 metrics_source: str | None = None) -> None:
        self.store = store
        self._lease_s = lease_s
        self._catch_up_s = catch_up_s
        self._counters_period_s = counters_period_s
        self._metrics_source = metrics_source
        self.follower: EtcdFollower | None = None
        self.leadership: CanaryLeadership | None = None
        #: Publishes this replica's gate counters (None with a --metrics-source).
        self.publisher: CounterPublisher | None = None

    @classmethod
    def open(cls, config: ServerConfig) -> FleetReplica:
        """Raises StateStoreURLError for a ``state_store`` that is not etcd://HOST:PORT/PREFIX."""
        assert config.state_store is not None
        store = EtcdDeploymentStore(EtcdLocation.parse(config.state_store),
                                    timeout_s=config.state_store_timeout_s)
        return cls(store, lease_s=config.leader_lease_s,
                   counters_period_s=config.fleet_counters_interval_s,
                   metrics_source=config.metrics_source)

    def follow(self, router: Router, canary: CanaryController, metrics: Metrics) -> EtcdFollower:
        """Build the follower (which starts canaries it sees on the leader) and the leadership
        (only its holder drives canaries); register the metrics."""
        self.follower = EtcdFollower(router, self.store, on_applied=canary.sync)

        async def leading(leader: bool) -> None:
            if leader:
                for name in router.models():
                    canary.sync(name)  # resume every running canary at its current step
            else:
                await canary.stand_down()

        self.leadership = CanaryLeadership(self.store, ttl_s=self._lease_s, on_change=leading)
        canary.may_drive = lambda: self.leadership is not None and self.leadership.is_leader
        metrics.register(FleetCollector(self))
        self._judge_on_the_fleet(router, canary, metrics)
        return self.follower

    def _judge_on_the_fleet(self, router: Router, canary: CanaryController,
                            metrics: Metrics) -> None:
        """The canary gates read every replica: Prometheus when named, else the counters each
        replica publishes to etcd (this one's included)."""
        if self._metrics_source:
            judge_with_prometheus(self._metrics_source, canary, metrics)
            return
        local = canary.evidence
        assert isinstance(local, LocalEvidence)

        def models() -> set[str]:
            shadowed = router.shadow.reports() if router.shadow is not None else []
            return ({name for name, _, _ in router.all_arm_stats()}
                    | {report.model for report in shadowed})

        self.publisher = CounterPublisher(
            self.store, lambda name: model_totals(router, local, name), models,
            replica=new_replica_id(), period_s=self._counters_period_s)
        evidence = FleetEvidence(self.store)
        canary.evidence = evidence
        metrics.register(FleetCountersCollector(self.publisher, "etcd", lambda: evidence.up))

    async def start(self) -> None:
        """Once the follower started: wait until it has applied the whole prefix once (so a
        replica reports ready on the fleet's current state), then campaign for leadership."""
        assert self.follower is not None and self.leadership is not None
        await self.follower.caught_up(self._catch_up_s)
        if self.publisher is not None:
            self.publisher.start()
        self.leadership.start()

    async def close(self) -> None:
        """After the canary drivers stopped: release leadership, close the client."""
        if self.leadership is not None:
            await self.leadership.close()
        if self.publisher is not None:
            await self.publisher.close()
        await self.store.close()


class FleetCollector(Collector):
    """The fleet gauges of one replica (read at each scrape, from the event loop's values)."""

    def __init__(self, fleet: FleetReplica) -> None:
        self._fleet = fleet

    def collect(self) -> Iterable[Metric]:
        follower, leadership = self._fleet.follower, self._fleet.leadership
        up = GaugeMetricFamily("sluice_state_store_up", "1 while the deployment state store "
                               "answers and this replica follows it; 0: serving the last "
                               "state applied", labels=["store"])
        up.add_metric(["etcd"], 1.0 if follower is not None and follower.up else 0.0)
        revision = GaugeMetricFamily("sluice_state_store_revision", "Revision of the "
                                     "deployment state store last applied here",
                                     labels=["store"])
        revision.add_metric(["etcd"], float(follower.revision if follower is not None else 0))
        leader = GaugeMetricFamily("sluice_canary_leader", "1 on the replica that drives the "
                                   "fleet's canaries (holds the etcd lease)", labels=["store"])
        leader.add_metric(["etcd"], 1.0 if leadership is not None and leadership.is_leader
                          else 0.0)
        return [up, revision, leader]
