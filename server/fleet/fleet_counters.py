"""A fleet's canary gates judged on every replica's numbers, summed through etcd (issue 15).

Each replica publishes, every ``period_s`` (``--fleet-counters-interval``) and never on the
request path, the cumulative gate counters it already keeps, one key per model::

    <prefix>/counters/<replica id>/<model>   JSON, attached to the replica's own lease

    {"arms": [{"arm", "version", "requests", "errors", "latency_us": {"<us>": successes}}],
     "shadows": [{"live_version", "shadow_version", "compared", "label_rows", "agree"}],
     "quality": [{"arm", "version", "accuracy", "labelled"}]}

``latency_us`` is the arm's cumulative latency distribution of successful requests
(microseconds to 8 significant bits, :attr:`ArmStats.latency_counts`), so a fleet's p99 is
exact to that precision. The lease (TTL ``max(2, 4 * period_s)`` seconds, kept alive by every
publication) makes a dead replica's counters disappear within the TTL.

The canary driver (one per fleet) judges on :class:`FleetEvidence`: at the start of a step it
reads every replica's counters (the baseline); at each check it reads them again and sums,
over the replicas live now, each one's counts minus its baseline (zero for a replica that
joined during the step). So the counters published are cumulative, and a step's numbers are
differences: no replica needs to know when steps begin. The shadow agreement and the live
accuracy are windows already (as on one server), so they are summed as they are: agreeing rows
over labelled rows, correct rows over labelled rows. Numbers lag by at most one ``period_s``
at either end of a step (requests answered in the last period before the step began may count
in it); a replica that dies takes its share of the step's counts with it.

etcd not answering: publication retries every period with a new lease; the driver's read
reports ``pending`` (the step waits), never a verdict on partial data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.server.fleet.etcd_store import _ETCD_ERRORS, EtcdDeploymentStore
from sluice.server.rollout.arm_stats import EpochStats, count_difference, epoch_stats
from sluice.server.rollout.gate_evidence import Agreement, LocalEvidence, StepEvidence
from sluice.server.rollout.router import Router
from sluice.server.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def new_replica_id() -> str:
    """This process's name in the counters' keys: host, pid and a random suffix (a restarted
    replica is a new one, whose counts start from zero)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def model_totals(router: Router, local: LocalEvidence, name: str) -> dict[str, Any]:
    """``name``'s cumulative gate counters on this replica (the published JSON)."""
    arms, quality = [], []
    for (arm, version), stats in sorted(router.arm_stats(name).items(),
                                        key=lambda item: (item[0][0], item[0][1] or 0)):
        arms.append({"arm": arm, "version": version, "requests": stats.requests,
                     "errors": stats.errors,
                     "latency_us": {str(us): n for us, n in stats.latency_counts.items()}})
        if local.quality is not None and version is not None:
            accuracy, labelled = local.quality(name, arm, version)
            if accuracy is not None and labelled:
                quality.append({"arm": arm, "version": version, "accuracy": accuracy,
                                "labelled": labelled})
    shadows = []
    if router.shadow is not None:
        for report in router.shadow.report(name):
            agree = round((report.agreement or 0.0) * report.label_rows)
            shadows.append({"live_version": report.live_version,
                            "shadow_version": report.shadow_version,
                            "compared": report.compared, "label_rows": report.label_rows,
                            "agree": agree})
    return {"arms": arms, "shadows": shadows, "quality": quality}


class CounterPublisher:
    """Publishes this replica's counters under ``<prefix>/counters/<replica>/``; one task."""

    def __init__(self, store: EtcdDeploymentStore, totals: Callable[[str], dict[str, Any]],
                 models: Callable[[], Iterable[str]], *, replica: str,
                 period_s: float = 1.0) -> None:
        self._store = store
        self._totals = totals
        self._models = models
        self.replica = replica
        self.period_s = period_s
        self.ttl_s = max(2, int(period_s * 4 + 0.999))
        self.prefix = f"{store.location.prefix}/counters/{replica}/"
        #: Whether the last publication (puts and the lease's keep-alive) answered.
        self.up = False
        self._lease: Any = None
        self._published: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="fleet-counters")

    async def close(self) -> None:
        """Stop publishing and revoke the lease (the counters go at once, not after the TTL)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(*_ETCD_ERRORS):
                await lease.revoke()

    async def _run(self) -> None:
        while True:
            try:
                await self.publish()
                if not self.up:
                    log.info("fleet counters: publishing under %s every %gs", self.prefix,
                             self.period_s)
                self.up = True
            except asyncio.CancelledError:
                raise
            except _ETCD_ERRORS as exc:
                if self.up:
                    log.warning("fleet counters: %s did not answer (%s); retrying every %gs",
                                self._store.location, type(exc).__name__, self.period_s)
                self.up, self._lease = False, None  # the lease may expire meanwhile: a new one
            except Exception:  # our bug: log it, keep serving, try again
                log.exception("fleet counters: publishing failed")
                self.up = False
            await asyncio.sleep(self.period_s)

    async def publish(self) -> None:
        """Put every model's counters that changed since their last put; keep the lease."""
        client = self._store.client
        if self._lease is None:
            self._lease = await client.lease(self.ttl_s)
            self._published = {}
        else:
            reply = await self._lease.refresh()
            if reply is None or reply.TTL <= 0:  # expired (etcd was away): start afresh
                self._lease = await client.lease(self.ttl_s)
                self._published = {}
        for name in sorted(set(self._models())):
            value = json.dumps(self._totals(name), separators=(",", ":"),
                               allow_nan=False).encode()
            if self._published.get(name) != value:
                await client.put((self.prefix + name).encode(), value, lease=self._lease)
                self._published[name] = value


#: One replica's published counters of one model.
Reading = Mapping[str, Any]


class FleetEvidence:
    """The gates' evidence summed over every live replica's published counters (see the
    module docstring). ``clock``: monotonic seconds, for the step's duration."""

    def __init__(self, store: EtcdDeploymentStore, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self.prefix = f"{store.location.prefix}/counters/"
        #: model -> (baseline readings per replica, monotonic start of the step).
        self._base: dict[str, tuple[dict[str, Reading], float]] = {}
        #: Whether the last read answered (None: none yet).
        self.up: bool | None = None

    async def start_step(self, name: str, record: Mapping[str, Any]) -> None:
        self._base.pop(name, None)
        with contextlib.suppress(*_ETCD_ERRORS):
            self._base[name] = (await self._read(name), self._clock())

    async def read(self, name: str, record: Mapping[str, Any]) -> StepEvidence:
        try:
            now = await self._read(name)
        except _ETCD_ERRORS as exc:
            if self.up is not False:
                log.warning("canary of model '%s': fleet counters in %s unreadable (%s); the "
                            "step waits", name, self._store.location, type(exc).__name__)
            self.up = False
            return StepEvidence(pending=f"fleet counters in {self._store.location} unreadable")
        self.up = True
        if name not in self._base:  # etcd was away when the step began: it begins now
            self._base[name] = (now, self._clock())
        base, started = self._base[name]
        duration = self._clock() - started
        candidate, stable = int(record["candidate"]), int(record["stable"])
        return StepEvidence(
            _arm(now, base, "candidate", candidate, duration),
            _arm(now, base, "stable", stable, duration),
            _agreements(now.values(), candidate),
            (_accuracy(now.values(), "candidate", candidate),
             _accuracy(now.values(), "stable", stable)),
            source=f"{len(now)} replicas via etcd")

    async def close(self) -> None:
        return None

    async def _read(self, name: str) -> dict[str, Reading]:
        """replica -> its counters of ``name``, as etcd holds them now (live replicas only)."""
        found = await self._store.client.get_prefix(self.prefix.encode())
        out: dict[str, Reading] = {}
        for kv in found:
            replica, _, model = kv.key.decode("utf-8", "replace")[len(self.prefix):].partition(
                "/")
            if model != name:
                continue
            try:
                out[replica] = json.loads(kv.value)
            except ValueError:
                log.error("fleet counters: key %s does not parse; left out",
                          kv.key.decode("utf-8", "replace"))
        return out


def _arm_entry(reading: Reading, arm: str, version: int) -> tuple[int, int, dict[int, int]]:
    for entry in reading.get("arms", ()):
        if entry.get("arm") == arm and entry.get("version") == version:
            counts = {int(us): int(n) for us, n in entry.get("latency_us", {}).items()}
            return int(entry["requests"]), int(entry["errors"]), counts
    return 0, 0, {}


def _arm(now: Mapping[str, Reading], base: Mapping[str, Reading], arm: str, version: int,
         duration_s: float) -> EpochStats:
    """One arm's step numbers: each live replica's counts minus its baseline, summed."""
    requests = errors = 0
    counts: dict[int, int] = {}
    for replica, reading in now.items():
        r1, e1, c1 = _arm_entry(reading, arm, version)
        r0, e0, c0 = _arm_entry(base.get(replica, {}), arm, version)
        if r1 < r0:  # counters went back (a restart under the same name): count from zero
            r0, e0, c0 = 0, 0, {}
        requests += r1 - r0
        errors += e1 - e0
        for us, n in count_difference(c1, c0).items():
            counts[us] = counts.get(us, 0) + n
    return epoch_stats(requests, errors, counts, duration_s)


def _agreements(readings: Iterable[Reading], candidate: int) -> tuple[Agreement, ...]:
    """The candidate's shadow agreement per live version, summed over replicas."""
    sums: dict[int, list[int]] = {}
    for reading in readings:
        for entry in reading.get("shadows", ()):
            if entry.get("shadow_version") == candidate:
                total = sums.setdefault(int(entry["live_version"]), [0, 0, 0])
                total[0] += int(entry["agree"])
                total[1] += int(entry["label_rows"])
                total[2] += int(entry["compared"])
    return tuple(Agreement(agree / rows, compared)
                 for _, (agree, rows, compared) in sorted(sums.items()) if rows and compared)


def _accuracy(readings: Iterable[Reading], arm: str, version: int) -> tuple[float | None, int]:
    """(accuracy, labelled rows) of (arm, version) over every replica's live window."""
    correct = labelled = 0.0
    for reading in readings:
        for entry in reading.get("quality", ()):
            if entry.get("arm") == arm and entry.get("version") == version:
                correct += float(entry["accuracy"]) * int(entry["labelled"])
                labelled += int(entry["labelled"])
    return (correct / labelled if labelled else None), int(labelled)


class FleetCountersCollector(Collector):
    """``sluice_fleet_counters_up{store="etcd"}``: 1 while this replica's gate counters are
    published; ``sluice_canary_gate_source_up{source}``: 0 while the canary driver here cannot
    read the source its gates are judged on (a step waits meanwhile)."""

    def __init__(self, publisher: CounterPublisher | None, source: str,
                 source_up: Callable[[], bool | None]) -> None:
        self._publisher = publisher
        self._source = source
        self._source_up = source_up

    def collect(self) -> Iterable[Metric]:
        if self._publisher is not None:
            up = GaugeMetricFamily("sluice_fleet_counters_up", "1 while this replica's canary "
                                   "gate counters are published to the fleet", labels=["store"])
            up.add_metric(["etcd"], 1.0 if self._publisher.up else 0.0)
            yield up
        source = GaugeMetricFamily("sluice_canary_gate_source_up", "0 while the canary driver "
                                   "cannot read what its gates are judged on (the step waits)",
                                   labels=["source"])
        source.add_metric([self._source], 0.0 if self._source_up() is False else 1.0)
        yield source
