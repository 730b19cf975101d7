"""Cost per prediction: the process's CPU seconds charged to the model versions that used them.

Each version's :class:`~sluice.server.serving.cpu_meter.CpuMeter` measures the CPU of the threads
that ran its batches (its *own* CPU). The rest of the process's CPU (the event loop decoding and
encoding requests, gRPC's threads, a runtime's own thread pool such as ONNX Runtime's intra-op
threads, the monitors) is *shared*: at each reading, the shared CPU since the previous reading is
split between the versions in proportion to the wall time their batches computed in that
interval. An interval in which nothing computed charges nobody: its CPU is counted as
unattributed. So, between any two readings,

    process CPU = sum over versions (own + share) + unattributed        (exactly)

which a dashboard can check, and the cost per prediction includes what it costs to receive and
answer a request, not only the model's arithmetic.

Readings happen when /metrics is scraped or ``sluice stats`` asks (no thread, no timer); each one
takes a lock, reads the process CPU clock and each version's meter. With a price per core-hour
(``sluice serve --price-per-core-hour``) the CPU seconds per row become a currency figure per
1,000 predictions.

Promises:
- Charged totals only grow, per version, for as long as the version stays loaded; a version
  loaded again starts from zero (like its other counters).
- Figures per row are over the version's life so far (since it loaded); rates over a window are
  ``rate(sluice_model_cpu_seconds_total) / rate(sluice_inference_rows_total)`` in PromQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.server.serving.model import ModelVersion

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class VersionCost:
    """What one version has cost since it loaded."""

    model: str
    version: int
    #: Rows inferred (successful batches).
    rows: int
    #: CPU seconds of the threads that ran its batches.
    own_cpu_s: float
    #: Own CPU plus its share of the process's other CPU.
    cpu_s: float
    #: CPU seconds per row; None before any row.
    cpu_s_per_row: float | None
    #: Currency per 1,000 rows at the configured price; None without a price or a row.
    cost_per_1k: float | None
    #: Own CPU seconds per instance, and of the background thread (shadow-only batches).
    instance_cpu_s: tuple[float, ...] = ()
    shadow_cpu_s: float = 0.0


@dataclass(slots=True)
class _Ledger:
    own_s: float = 0.0
    wall_s: float = 0.0
    charged_s: float = 0.0


class CostAccountant:
    """Charges the process's CPU to the loaded versions (see the module docstring)."""

    def __init__(
        self,
        versions: Callable[[], list[ModelVersion]],
        *,
        price_per_core_hour: float | None = None,
        process_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        """``versions``: the loaded versions now (``ModelRepository.loaded``);
        ``process_cpu``: CPU seconds of the whole process (all threads) so far."""
        if price_per_core_hour is not None and not price_per_core_hour >= 0:
            raise ValueError(f"price per core-hour must be >= 0, got {price_per_core_hour}")
        self.price_per_core_hour = price_per_core_hour
        self._versions = versions
        self._process_cpu = process_cpu
        self._lock = threading.Lock()
        self._ledgers: dict[ModelVersion, _Ledger] = {}
        self._last_process_s = process_cpu()
        #: Process CPU seconds charged to no version (intervals in which nothing computed).
        self.unattributed_s = 0.0

    def refresh(self) -> list[VersionCost]:
        """Charge the CPU used since the last reading; every loaded version's figures."""
        with self._lock:
            versions = self._versions()
            now_s = self._process_cpu()
            spent = max(0.0, now_s - self._last_process_s)
            self._last_process_s = now_s
            ledgers = {v: self._ledgers.get(v) or _Ledger() for v in versions}
            self._ledgers = ledgers  # versions unloaded meanwhile are forgotten
            own: dict[ModelVersion, float] = {}
            wall: dict[ModelVersion, float] = {}
            for served, ledger in ledgers.items():
                own_now, wall_now = served.cpu.cpu_s, served.cpu.wall_s
                own[served] = max(0.0, own_now - ledger.own_s)
                wall[served] = max(0.0, wall_now - ledger.wall_s)
                ledger.own_s, ledger.wall_s = own_now, wall_now
            shared = max(0.0, spent - sum(own.values()))
            busy = sum(wall.values())
            if busy <= 0.0:
                self.unattributed_s += shared
            for served, ledger in ledgers.items():
                share = shared * wall[served] / busy if busy > 0.0 else 0.0
                ledger.charged_s += own[served] + share
            return [self._figures(served, ledger) for served, ledger in ledgers.items()]

    def _figures(self, served: ModelVersion, ledger: _Ledger) -> VersionCost:
        rows = served.stats.inference_count
        per_row = ledger.charged_s / rows if rows else None
        cost = None
        if per_row is not None and self.price_per_core_hour is not None:
            cost = per_row * 1000 * self.price_per_core_hour / SECONDS_PER_HOUR
        return VersionCost(served.name, served.version, rows, ledger.own_s, ledger.charged_s,
                           per_row, cost, tuple(served.cpu.instance_cpu_s),
                           served.cpu.background_cpu_s)

    def annotate(self, table: dict[str, Any], versions: Iterable[ModelVersion]) -> None:
        """Add a ``"cost"`` entry to each version of ``sluice stats``' table: ``{"rows",
        "cpu_seconds", "own_cpu_seconds", "cpu_seconds_per_row", "cost_per_1k_predictions",
        "price_per_core_hour"}`` (None where unknown)."""
        wanted = {(v.name, v.version) for v in versions}
        for figures in self.refresh():
            if (figures.model, figures.version) not in wanted:
                continue
            entry = table.setdefault(figures.model, {}).setdefault(str(figures.version), {})
            entry["cost"] = {
                "rows": figures.rows,
                "cpu_seconds": figures.cpu_s,
                "own_cpu_seconds": figures.own_cpu_s,
                "cpu_seconds_per_row": figures.cpu_s_per_row,
                "cost_per_1k_predictions": figures.cost_per_1k,
                "price_per_core_hour": self.price_per_core_hour,
            }


class CostCollector(Collector):
    """/metrics for :class:`CostAccountant`: charged and own CPU per version and instance, the
    unattributed rest, CPU seconds per row and, with a price, the cost of 1,000 predictions."""

    def __init__(self, accountant: CostAccountant) -> None:
        self._accountant = accountant

    def collect(self) -> Iterable[Metric]:
        accountant = self._accountant
        labels = ["model", "version"]
        charged = CounterMetricFamily(
            "sluice_model_cpu_seconds", "Process CPU seconds charged to a model version: its "
            "batches' own thread CPU plus its compute-time share of the rest.", labels=labels)
        instance = CounterMetricFamily(
            "sluice_instance_cpu_seconds", "CPU seconds of the thread running a model instance's "
            "batches (instance 'shadow': the background thread of shadow-only batches).",
            labels=[*labels, "instance"])
        per_row = GaugeMetricFamily(
            "sluice_cpu_seconds_per_row", "CPU seconds charged per row inferred, since the "
            "version loaded.", labels=labels)
        per_1k = GaugeMetricFamily(
            "sluice_cost_per_1k_predictions", "Cost of 1,000 rows at --price-per-core-hour, "
            "since the version loaded.", labels=labels)
        for figures in accountant.refresh():
            values = [figures.model, str(figures.version)]
            charged.add_metric(values, figures.cpu_s)
            for index, seconds in enumerate(figures.instance_cpu_s):
                instance.add_metric([*values, str(index)], seconds)
            if figures.shadow_cpu_s:
                instance.add_metric([*values, "shadow"], figures.shadow_cpu_s)
            if figures.cpu_s_per_row is not None:
                per_row.add_metric(values, figures.cpu_s_per_row)
            if figures.cost_per_1k is not None:
                per_1k.add_metric(values, figures.cost_per_1k)
        unattributed = CounterMetricFamily(
            "sluice_unattributed_cpu_seconds", "Process CPU seconds spent while no model "
            "version computed (charged to none).")
        unattributed.add_metric([], accountant.unattributed_s)
        yield from (charged, instance, per_row, per_1k, unattributed)
        if accountant.price_per_core_hour is not None:
            price = GaugeMetricFamily(
                "sluice_price_per_core_hour", "Price of one CPU core-hour (--price-per-core-hour),"
                " in the operator's currency.")
            price.add_metric([], accountant.price_per_core_hour)
            yield price
