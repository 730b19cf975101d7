"""A worker process's losses and CPU on /metrics: ``sluice_{name}_lost_total`` (workers that
died or hung, each replaced) and ``sluice_{name}_cpu_seconds_total`` (the running worker's; it
starts over with a new one), for drift's worker and the monitor process."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class WorkerMeters(Protocol):
    """What :class:`~.worker_process.WorkerProcess` tells about itself."""

    lost: int

    def cpu_seconds(self) -> float | None: ...


class WorkerCollector(Collector):
    """A worker process's losses and CPU: ``sluice_{name}_lost``
    and ``sluice_{name}_cpu_seconds`` (drift_worker, monitor_worker)."""

    def __init__(self, worker: WorkerMeters, name: str, title: str) -> None:
        self._worker, self._name, self._title = worker, name, title

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            f"sluice_{self._name}_lost", f"{self._title} processes that died or hung (each "
            "replaced; what they held started over).", value=self._worker.lost)
        cpu = self._worker.cpu_seconds()
        if cpu is not None:
            yield CounterMetricFamily(
                f"sluice_{self._name}_cpu_seconds", f"CPU seconds of the running "
                f"{self._title.lower()} process (not in process_cpu_seconds_total).", value=cpu)
