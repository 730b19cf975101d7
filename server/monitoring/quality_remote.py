"""Live quality kept in the monitor process: :class:`~.quality.QualityMonitor`'s surface, each
call answered by the worker's own monitor (why a process: :mod:`.monitor_remote`).

On the hub's thread it only names the answers of the models the worker scores (a set lookup per
record); :class:`~.monitor_remote.MonitorLink` hands them over with the log's picks. Every other
call is a message to the worker, answered after every batch handed over before it: feedback
drains the hub first, so labels join answers already given. Blocking: callers on the event loop
use a thread.

While the worker is being replaced: reports and feedback fail UNAVAILABLE (retry), the metrics
show no window, the canary's accuracy gates see no labelled row (they wait), and answers that
could not be handed over are counted (``MonitorLink.unscored``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sluice.server.config.model import ModelConfig
from sluice.server.errors import ModelNotReady
from sluice.server.monitoring.drained import Drained
from sluice.server.monitoring.finished import Finished
from sluice.server.monitoring.hub import MonitorHub
from sluice.server.monitoring.monitor_remote import MonitorLink
from sluice.server.monitoring.quality import FeedbackResult, Label, scored, scoring
from sluice.server.monitoring.worker_process import WorkerGone

log = logging.getLogger(__name__)


class RemoteQuality:
    """Live quality of every watched model, kept by the monitor process."""

    def __init__(self, hub: MonitorHub, link: MonitorLink) -> None:
        self._hub = hub
        self._link = link
        #: Models the worker scores (the hub watches them for us).
        self._watched: frozenset[str] = frozenset()
        #: Models the worker has been told of.
        self._known: set[str] = set()
        hub.subscribe("quality", self.on_finished)

    def model_loaded(self, name: str, configs: Mapping[int, ModelConfig],
                     model_dir: Path | None = None) -> None:
        """How each version of ``name`` is scored, decided here (is it watched?) and in the
        worker, now if ``name`` is scored or was, and in every worker started later: a server
        whose models are not scored starts no worker for quality. Blocking."""
        settings = self._link.quality_settings
        watch = scored(scoring(name, configs, model_dir, window_rows=settings["window_rows"],
                               window_s=settings["window_s"]))
        key, attach = ("quality", name), (dict(configs), model_dir)
        if watch or name in self._known:
            self._link.worker.register(key, *attach)
        else:
            self._link.worker.remember(key, *attach)
        self._known.add(name)
        if watch != (name in self._watched):
            (self._hub.watch if watch else self._hub.unwatch)(name)
            self._watched = (self._watched | {name}) if watch else (self._watched - {name})

    def on_finished(self, records: Sequence[Finished]) -> None:
        """The hub's thread: name this drain's answers of scored models for the hand-over."""
        watched = self._watched
        if not watched:
            return
        drained = Drained.of(records)
        models = drained.models()
        if models.keys() <= watched:
            self._link.scored.append(drained)
        elif models.keys() & watched:
            self._link.scored.append(drained.view(
                [i for i, key in enumerate(drained.keys()) if key[0] in watched]))

    def feedback(self, name: str, labels: Iterable[Label]) -> FeedbackResult:
        self._hub.drain()  # answers already given are handed over before the labels
        result = self._call("feedback", name, list(labels))
        assert isinstance(result, FeedbackResult)
        return result

    def report(self, name: str) -> dict[str, Any]:
        result = self._call("report", name)
        assert isinstance(result, dict)
        return result

    def reports(self) -> list[dict[str, Any]]:
        """Every model's report (the metrics: answers not handed over count as skipped);
        none while the worker is being replaced, or before one is needed (no model scored)."""
        if not self._watched and not self._link.worker.alive:
            return []  # a scrape starts no worker
        try:
            result = self._link.call("reports")
        except (WorkerGone, RuntimeError) as exc:
            log.warning("live quality: no reports now: %s", exc)
            return []
        assert isinstance(result, list)
        for report in result:
            lost = self._link.unscored.get(report["model"], 0)
            if lost:
                report["counts"]["skipped_unreadable"] = (
                    report["counts"].get("skipped_unreadable", 0) + lost)
        return result

    def accuracy(self, name: str, arm: str, version: int) -> tuple[float | None, int]:
        """(accuracy, labelled rows); (None, 0), as for no labelled row, while the worker is
        being replaced."""
        try:
            result = self._link.call("accuracy", name, arm, version)
        except (WorkerGone, RuntimeError) as exc:
            log.warning("live quality: no accuracy now: %s", exc)
            return None, 0
        assert isinstance(result, tuple)
        return result

    def _call(self, kind: str, *args: object) -> object:
        try:
            return self._link.call(kind, *args)
        except WorkerGone:
            raise ModelNotReady("live quality is starting again (its worker process was "
                                "lost); retry") from None
