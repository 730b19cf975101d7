"""The feedback loop's parts (issue 13), built on one hub, started and stopped together.

Finished requests reach the monitors through :class:`~sluice.server.monitoring.hub.MonitorHub`
(the servicer offers them); on it sit the prediction log, live quality and drift. Cost per
prediction reads the instances' CPU meters. Each registers its collector on the server's
:class:`~sluice.server.metrics.Metrics`. Part of the composition root: it names the worker
processes the monitors' heavy work runs in, which the monitors themselves may not import: the
monitor process (``sluice.server.monitor_worker``: the log's writer, live quality) and drift's
(``sluice.server.drift_worker``: its windows and Numba kernels).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Callable

from prometheus_client import ProcessCollector

from sluice.server.config.model import ModelConfig
from sluice.server.config.settings import ServerConfig
from sluice.server.metrics import Metrics
from sluice.server.monitoring.cost import CostAccountant, CostCollector
from sluice.server.monitoring.drift import DriftMonitor
from sluice.server.monitoring.drift_metrics import DriftCollector
from sluice.server.monitoring.gpu import GpuCollector
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.monitoring.loop_lag import LoopLag, LoopLagCollector
from sluice.server.monitoring.monitor_remote import MonitorLink
from sluice.server.monitoring.prediction_log import PredictionLog
from sluice.server.monitoring.prediction_metrics import HubCollector, PredictionLogCollector
from sluice.server.monitoring.prediction_writer import writer_settings
from sluice.server.monitoring.quality_metrics import QualityCollector
from sluice.server.monitoring.quality_remote import RemoteQuality
from sluice.server.monitoring.worker_metrics import WorkerCollector
from sluice.server.monitoring.worker_process import WorkerProcess
from sluice.server.serving.repository import ModelRepository


class FeedbackLoop:
    """The hub and the monitors on it, for one server."""

    def __init__(
        self, config: ServerConfig, repository: ModelRepository, metrics: Metrics,
        describe: Callable[[str, int], ModelConfig | None],
    ) -> None:
        self._repository = repository
        self.hub = MonitorHub()
        metrics.register(HubCollector(self.hub))
        # the log's writer and quality's windows live in a worker process at the lowest
        # priority (monitor_remote); the hub's thread samples, picks and encodes each drain once
        self.link = MonitorLink(
            WorkerProcess([sys.executable, "-m", "sluice.server.monitor_worker"],
                          name="monitor worker"),
            predictions_dir=config.predictions_dir, tag=secrets.token_hex(4),
            writer=writer_settings(config),
            quality={"window_rows": config.quality_window_rows,
                     "window_s": config.quality_window_s})
        self.prediction_log = PredictionLog.for_server(self.hub, config, describe,
                                                       writer=self.link.writer)
        metrics.register(PredictionLogCollector(self.prediction_log.writer))
        self.quality = RemoteQuality(self.hub, self.link)
        self.link.attach(self.hub)
        metrics.register(QualityCollector(self.quality.reports))
        metrics.register(WorkerCollector(self.link.worker, "monitor_worker", "Monitor worker"))
        # drift: a version's reference profile is read (and checked) as it loads; its windows
        # and Numba kernels live in a worker process at the lowest priority (drift_remote)
        worker = WorkerProcess([sys.executable, "-m", "sluice.server.drift_worker"])
        self.drift = DriftMonitor(
            self.hub, worker=worker, interval_s=config.drift_interval_s,
            is_loaded=lambda model, version: repository.find(model, version) is not None,
        )
        repository.check_version = self.drift.load_version
        metrics.register(DriftCollector(self.drift.reports, config.drift_top_features))
        metrics.register(WorkerCollector(worker, "drift_worker", "Drift worker"))
        # cost per prediction and resource use: process CPU and RSS, each instance's CPU, NVML
        # when there is a GPU, CPU seconds (and price) per row in /metrics and `sluice stats`
        self.cost = CostAccountant(
            repository.loaded, price_per_core_hour=config.price_per_core_hour)
        metrics.register(CostCollector(self.cost))
        metrics.register(ProcessCollector(registry=None))
        metrics.register(GpuCollector())
        # the event loop's own health: how late it runs what is due (stalls of any cause)
        self.loop_lag = LoopLag()
        metrics.register(LoopLagCollector(self.loop_lag))

    def start(self) -> None:
        """Start the hub's, the log writer's and drift's threads, and the loop-lag probe (on
        the running loop)."""
        self.loop_lag.start()
        self.hub.start()
        self.prediction_log.start()
        self.drift.start()

    async def model_loaded(self, name: str) -> None:
        """The monitors' settings for ``name``, once it (re)loaded: the prediction log's, and
        which versions live quality scores (deployment.yaml's ``quality`` block, on a thread)."""
        model_dir = self._repository.root / name
        await self.prediction_log.model_dir_loaded(name, model_dir)
        configs = {v.version: v.config for v in self._repository.loaded() if v.name == name}
        if configs:
            await asyncio.to_thread(self.quality.model_loaded, name, configs, model_dir)

    async def close(self) -> None:
        """Once every request is answered: the hub hands over its last records, the log
        writes them, the monitor process and drift stop."""
        await self.loop_lag.stop()
        await asyncio.to_thread(self.hub.close)
        await asyncio.to_thread(self.prediction_log.close)
        await asyncio.to_thread(self.link.close)
        await asyncio.to_thread(self.drift.close)
