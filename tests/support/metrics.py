"""Reading a test server's /metrics: scrape all samples, then say how far each one moved."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.running import RunningServer

Labels = frozenset[tuple[str, str]]


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def scrape(running: RunningServer) -> dict[tuple[str, Labels], float]:
    """Every sample on the server's /metrics now: (sample name, labels) -> value."""
    url = f"http://127.0.0.1:{running.server.metrics.port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(sample.name, labels(**sample.labels)): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


def moved(before: dict, after: dict, name: str) -> dict[Labels, float]:
    """How far each sample called ``name`` moved between two scrapes (those that moved)."""
    change = {key[1]: after.get(key, 0.0) - before.get(key, 0.0)
              for key in {*before, *after} if key[0] == name}
    return {key: delta for key, delta in change.items() if delta}
