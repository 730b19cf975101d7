"""A canary's gates as PromQL over every replica (``--metrics-source prometheus://host:port``),
the way Flagger and Argo Rollouts judge a canary (issue 15 item 2).

At each check of a step the driver asks Prometheus's HTTP API (``/api/v1/query``, aiohttp on
the event loop, ``timeout_s`` per query) for the step so far, ``W`` being the time since the
step began (in milliseconds, so no earlier step leaks in), ``{arm}`` the arm's selector
``model="m", arm="candidate"|"stable", version="v"``::

    requests  sum(increase(sluice_arm_requests_total{arm}[W]))
    errors    sum(increase(sluice_arm_requests_total{arm, outcome="failure"}[W]))
    p50, p99  histogram_quantile(q, sum by (le) (increase(
                  sluice_arm_request_duration_seconds_bucket{arm}[W])))

and, only when the canary's gates ask for them (they are windows already, as on one server)::

    agreement  sum by (live_version) (sluice_shadow_agreement{s}
                   * sluice_shadow_label_rows_total{s})
               / sum by (live_version) (sluice_shadow_label_rows_total{s})    s: the candidate
    accuracy   sum(sluice_quality{arm, metric="accuracy"} * ignoring(metric, kind)
                   sluice_quality_rows{arm, kind="labelled"}) / sum(sluice_quality_rows{...})

``increase`` extrapolates to the window's ends, so counts are rounded to whole requests; a
series born inside the window counts from its first scrape. Prometheus unreachable, slow, or
answering an error: the read is ``pending`` with the reason (logged on the first failure and
shown by ``sluice_canary_gate_source_up{source="prometheus"}``), and the step waits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from sluice.server.fleet.fleet_counters import FleetCountersCollector
from sluice.server.fleet.location import prometheus_base_url
from sluice.server.metrics import Metrics
from sluice.server.rollout.arm_stats import EpochStats
from sluice.server.rollout.canary import CanaryController
from sluice.server.rollout.canary_plan import CanaryGates
from sluice.server.rollout.gate_evidence import Agreement, StepEvidence

log = logging.getLogger(__name__)


class PrometheusUnusable(Exception):
    """Prometheus did not answer a query, or answered something that is not a result."""


def _selector(**labels: str) -> str:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ", ".join(f"{k}={quoted(v)}" for k, v in labels.items()) + "}"


def arm_queries(model: str, arm: str, version: int, window: str) -> dict[str, str]:
    """The PromQL of one arm's step numbers over ``window`` (a PromQL duration)."""
    sel = _selector(model=model, arm=arm, version=str(version))
    failed = _selector(model=model, arm=arm, version=str(version), outcome="failure")
    buckets = f"sum by (le) (increase(sluice_arm_request_duration_seconds_bucket{sel}[{window}]))"
    return {
        "requests": f"sum(increase(sluice_arm_requests_total{sel}[{window}]))",
        "errors": f"sum(increase(sluice_arm_requests_total{failed}[{window}]))",
        "p50": f"histogram_quantile(0.5, {buckets})",
        "p99": f"histogram_quantile(0.99, {buckets})",
    }


def agreement_queries(model: str, candidate: int) -> dict[str, str]:
    sel = _selector(model=model, shadow_version=str(candidate))
    rows = f"sum by (live_version) (sluice_shadow_label_rows_total{sel})"
    return {
        "agreement": (f"sum by (live_version) (sluice_shadow_agreement{sel} * "
                      f"sluice_shadow_label_rows_total{sel}) / {rows}"),
        "compared": f"sum by (live_version) (sluice_shadow_compared_total{sel})",
    }


def accuracy_queries(model: str, arm: str, version: int) -> dict[str, str]:
    accuracy = _selector(model=model, arm=arm, version=str(version), metric="accuracy")
    labelled = _selector(model=model, arm=arm, version=str(version), kind="labelled")
    return {
        "accuracy": (f"sum(sluice_quality{accuracy} * ignoring(metric, kind) "
                     f"sluice_quality_rows{labelled}) / sum(sluice_quality_rows{labelled})"),
        "labelled": f"sum(sluice_quality_rows{labelled})",
    }


class PrometheusEvidence:
    """Step evidence from Prometheus (see the module docstring); owns one aiohttp session."""

    def __init__(self, base_url: str, *, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._started: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        #: Whether the last read answered (None: none yet).
        self.up: bool | None = None

    async def start_step(self, name: str, record: Mapping[str, Any]) -> None:
        self._started[name] = self._clock()

    async def read(self, name: str, record: Mapping[str, Any]) -> StepEvidence:
        started = self._started.setdefault(name, self._clock())
        elapsed = self._clock() - started
        window = f"{max(1, math.ceil(elapsed * 1000))}ms"
        candidate, stable = int(record["candidate"]), int(record["stable"])
        gates = CanaryGates.from_json(record.get("gates"))
        queries = {f"candidate.{k}": q
                   for k, q in arm_queries(name, "candidate", candidate, window).items()}
        queries |= {f"stable.{k}": q
                    for k, q in arm_queries(name, "stable", stable, window).items()}
        if gates.min_agreement is not None:
            queries |= agreement_queries(name, candidate)
        if gates.wants_accuracy:
            queries |= {f"acc.candidate.{k}": q
                        for k, q in accuracy_queries(name, "candidate", candidate).items()}
            queries |= {f"acc.stable.{k}": q
                        for k, q in accuracy_queries(name, "stable", stable).items()}
        try:
            answers = dict(zip(queries, await asyncio.gather(
                *(self._query(q) for q in queries.values())), strict=True))
        except PrometheusUnusable as exc:
            if self.up is not False:
                log.warning("canary of model '%s': %s; the step waits", name, exc)
            self.up = False
            return StepEvidence(pending=str(exc))
        self.up = True
        return StepEvidence(
            _epoch(answers, "candidate", elapsed), _epoch(answers, "stable", elapsed),
            _agreements(answers), (_accuracy(answers, "candidate"), _accuracy(answers, "stable")),
            source=f"Prometheus at {self.base_url}")

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _query(self, expr: str) -> dict[str, float]:
        """``expr``'s instant vector as {live_version label or "": value} (NaN left out)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self.base_url}/api/v1/query",
                                         params={"query": expr}) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusUnusable(f"Prometheus at {self.base_url} did not answer "
                                     f"({type(exc).__name__})") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", "no result") if isinstance(body, dict) else "no result"
            raise PrometheusUnusable(f"Prometheus at {self.base_url} refused a gate query: "
                                     f"{str(error)[:200]}")
        out: dict[str, float] = {}
        try:
            for sample in body["data"]["result"]:
                value = float(sample["value"][1])
                if not math.isnan(value):
                    out[sample["metric"].get("live_version", "")] = value
        except (KeyError, TypeError, ValueError, IndexError):
            raise PrometheusUnusable(f"Prometheus at {self.base_url}: a gate query's answer "
                                     "is not an instant vector") from None
        return out


def _epoch(answers: Mapping[str, dict[str, float]], arm: str, elapsed_s: float) -> EpochStats:
    requests = round(answers[f"{arm}.requests"].get("", 0.0))
    errors = min(requests, round(answers[f"{arm}.errors"].get("", 0.0)))
    p50 = answers[f"{arm}.p50"].get("")
    p99 = answers[f"{arm}.p99"].get("")
    return EpochStats(requests, errors, errors / requests if requests else 0.0,
                      p50 if requests and p50 is not None and math.isfinite(p50) else None,
                      p99 if requests and p99 is not None and math.isfinite(p99) else None,
                      elapsed_s)


def _agreements(answers: Mapping[str, dict[str, float]]) -> tuple[Agreement, ...]:
    rates, compared = answers.get("agreement", {}), answers.get("compared", {})
    return tuple(Agreement(rate, round(compared.get(live, 0.0)))
                 for live, rate in sorted(rates.items()) if compared.get(live))


def _accuracy(answers: Mapping[str, dict[str, float]], arm: str) -> tuple[float | None, int]:
    accuracy = answers.get(f"acc.{arm}.accuracy", {}).get("")
    labelled = round(answers.get(f"acc.{arm}.labelled", {}).get("", 0.0))
    return (accuracy if labelled else None), labelled


def judge_with_prometheus(url: str, canary: CanaryController,
                          metrics: Metrics) -> PrometheusEvidence:
    """Make ``canary`` judge its gates on Prometheus at ``url`` (``prometheus://HOST:PORT``)
    and register ``sluice_canary_gate_source_up{source="prometheus"}`` in ``metrics``."""
    evidence = PrometheusEvidence(prometheus_base_url(url))
    canary.evidence = evidence
    metrics.register(FleetCountersCollector(None, "prometheus", lambda: evidence.up))
    return evidence
