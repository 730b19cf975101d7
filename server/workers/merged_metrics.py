"""One /metrics for ``sluice serve --workers N``: the workers' expositions merged at scrape time.

Each worker serves its own registry on a private loopback port; the supervisor's /metrics
scrapes them all when it is scraped and merges them here. The merge is pure (families in,
families out) and follows one rule per kind of sample:

* counters, histograms (every bucket, ``_sum`` and ``_count``) and a summary's ``_sum`` and
  ``_count``: **summed** per sample name and label set, so rates and histogram quantiles over
  the whole server come out right (cumulative buckets add exactly);
* ``*_created`` samples: the earliest;
* gauges that count things (the name ends in ``_requests``, ``_rows`` or ``_bytes``: queue
  depth, bytes in flight): **summed**;
* every other sample (the sliding-window latency quantiles, a summary's quantiles, other
  gauges, info, untyped): kept **per worker** with an added ``worker`` label, because
  quantiles and ratios do not add up.

Counters stay monotonic across a worker's crash: the supervisor folds the last scrape of a
worker that exited into a "retired" total that keeps being added (counts the worker made after
its last scrape are lost), and a worker that is alive but does not answer the scrape keeps
contributing its last counters. Its gauges and quantiles drop out meanwhile, and
``sluice_worker_up{worker}`` is 0; a failed worker never fails the scrape.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

#: Gauge name endings whose values add up across workers (amounts of things, not times).
ADDITIVE_GAUGE_SUFFIXES = ("_requests", "_rows", "_bytes")
_CUMULATIVE_TYPES = ("counter", "histogram", "summary")
_SUM, _MIN, _PER_WORKER = "sum", "min", "per_worker"


def is_additive_gauge(name: str) -> bool:
    """Whether the gauge ``name`` is an amount whose per-worker values sum to the server's."""
    return name.endswith(ADDITIVE_GAUGE_SUFFIXES)


def parse_exposition(text: str) -> list[Metric]:
    """The metric families of one Prometheus text exposition (raises ValueError if malformed)."""
    return list(text_string_to_metric_families(text))


def _rule(family: Metric, sample: Sample, additive_gauge: Callable[[str], bool]) -> str:
    if sample.name.endswith("_created"):
        return _MIN
    kind = family.type
    if kind in ("counter", "histogram", "gaugehistogram"):
        return _SUM
    if kind == "summary":
        return _PER_WORKER if "quantile" in sample.labels else _SUM
    if kind == "gauge" and "quantile" not in sample.labels and additive_gauge(family.name):
        return _SUM
    return _PER_WORKER


def merge_families(
    scrapes: Mapping[str, Iterable[Metric]],
    *,
    worker_label: str = "worker",
    additive_gauge: Callable[[str], bool] = is_additive_gauge,
) -> list[Metric]:
    """Merge the families scraped from each worker (keyed by worker name) into one set.

    Families and samples keep the order they are first seen in. The first worker that has a
    family gives its help text and type.
    """
    merged: dict[str, Metric] = {}
    tables: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]] = {}
    for worker, families in scrapes.items():
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit)
                tables[family.name] = {}
            table = tables[family.name]
            target = merged[family.name]
            for sample in family.samples:
                how = _rule(target, sample, additive_gauge)
                labels = dict(sample.labels)
                if how == _PER_WORKER:
                    labels[worker_label] = worker
                key = (sample.name, tuple(sorted(labels.items())))
                entry = table.get(key)
                if entry is None:
                    table[key] = [sample.name, labels, float(sample.value)]
                elif how == _SUM:
                    entry[2] += sample.value
                elif how == _MIN:
                    entry[2] = min(entry[2], sample.value)
                else:  # the same worker twice: the later value wins
                    entry[2] = float(sample.value)
    for name, family in merged.items():
        for sample_name, labels, value in tables[name].values():
            family.add_sample(sample_name, labels, value)
    return list(merged.values())


def cumulative_part(families: Iterable[Metric]) -> list[Metric]:
    """Only the samples that only ever grow (counters, histograms, summary sums and counts):
    what a worker that is gone, or did not answer, still contributes to the totals."""
    out = []
    for family in families:
        if family.type not in _CUMULATIVE_TYPES:
            continue
        kept = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            if family.type != "summary" or "quantile" not in sample.labels:
                kept.add_sample(sample.name, dict(sample.labels), sample.value)
        out.append(kept)
    return out


def fetch_metrics(url: str, timeout_s: float, token: str | None = None) -> str:
    """GET ``url`` (a worker's /metrics) and return the body; ``token``: sent as a bearer
    token (authz: workers of a server with ``--tokens`` guard their /metrics)."""
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body: bytes = response.read()
    return body.decode()


@dataclass
class _Slot:
    """What the supervisor knows of one worker slot."""

    url: str | None = None
    #: Bumped when the slot's process exits, so a scrape that raced the exit is dropped.
    generation: int = 0
    alive: bool = False
    last: list[Metric] | None = None


class WorkerMetrics(Collector):
    """The supervisor's collector: its own metrics plus the workers' merged, per scrape.

    Thread-safe: the supervisor's event loop reports worker starts and exits while the HTTP
    server's threads collect. Owns a small thread pool so N workers are scraped in parallel and
    a hung worker costs one ``timeout_s``, not N.
    """

    def __init__(
        self,
        workers: int,
        *,
        timeout_s: float = 2.0,
        fetch: Callable[[str, float], str] = fetch_metrics,
    ) -> None:
        self._slots = [_Slot() for _ in range(workers)]
        self._retired: list[Metric] = []
        self._restarts = 0
        self._timeout_s = timeout_s
        self._fetch = fetch
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=min(workers, 16),
                                        thread_name_prefix="sluice-scrape")

    def worker_ready(self, worker: int, metrics_url: str | None) -> None:
        """Worker ``worker`` is serving; its /metrics is at ``metrics_url`` (None: none)."""
        with self._lock:
            slot = self._slots[worker]
            slot.url, slot.alive, slot.last = metrics_url, True, None

    def worker_exited(self, worker: int) -> None:
        """Worker ``worker``'s process is gone: fold its last scraped totals into the retired
        ones, so the server's counters never go backwards."""
        with self._lock:
            slot = self._slots[worker]
            if slot.last is not None:
                self._retired = merge_families(
                    {"retired": self._retired, "exited": cumulative_part(slot.last)})
            slot.url, slot.alive, slot.last = None, False, None
            slot.generation += 1

    def worker_restarted(self) -> None:
        """A replacement for a crashed worker was started."""
        with self._lock:
            self._restarts += 1

    def _scrape(self, url: str) -> list[Metric] | None:
        try:
            return parse_exposition(self._fetch(url, self._timeout_s))
        except (OSError, ValueError):  # refused, timed out, HTTP error, malformed exposition
            return None

    def collect(self) -> Iterable[Metric]:
        with self._lock:  # one snapshot, so sluice_workers and sluice_worker_up agree
            targets = [(k, s.url, s.generation) for k, s in enumerate(self._slots)
                       if s.alive and s.url is not None]
            alive = sum(1 for s in self._slots if s.alive)
        results = list(self._pool.map(lambda t: self._scrape(t[1]), targets))
        scrapes: dict[str, list[Metric]] = {}
        up = GaugeMetricFamily("sluice_worker_up",
                               "Whether the worker process answered this scrape (1) or not (0).",
                               labels=["worker"])
        with self._lock:
            answered = set()
            for (k, _url, generation), families in zip(targets, results, strict=True):
                slot = self._slots[k]
                if generation != slot.generation:  # exited meanwhile: already retired
                    continue
                if families is not None:
                    slot.last = families
                    scrapes[str(k)] = families
                    answered.add(k)
                elif slot.last is not None:
                    scrapes[str(k)] = cumulative_part(slot.last)
            for k in range(len(self._slots)):
                up.add_metric([str(k)], 1 if k in answered else 0)
            restarts = self._restarts
            retired = self._retired
        workers = GaugeMetricFamily("sluice_workers", "Worker processes running and serving.")
        workers.add_metric([], alive)
        restarted = CounterMetricFamily(
            "sluice_worker_restarts", "Worker processes started again after one exited.")
        restarted.add_metric([], restarts)
        yield from (workers, restarted, up)
        yield from merge_families({**scrapes, "retired": retired})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
