"""The one hand-off from the request path to everything that watches finished requests.

The servicer calls :meth:`MonitorHub.wants` (a dict lookup) and, for a watched model,
:meth:`MonitorHub.offer` with one :class:`Finished` record, whose fields are copied into the
drain's columns at once (:mod:`.drained`: a few appends under an uncontended lock, no wake-up;
the record itself is freed by the request path). One background thread drains the columns every
``interval_s`` and hands them, as one :class:`~.drained.Drained` (a sequence of records built on
demand), to every subscriber (the prediction log, quality, drift), in arrival order. When
``capacity`` records are waiting, a record is dropped and counted (``dropped``); a subscriber
that raises loses that batch only, counted per subscriber (``failures``), and is called again
with the next one. A record's inputs are kept only where a subscriber asked for them
(:meth:`MonitorHub.want_inputs`: the log with inputs on, drift for its sampled share), drawn
as the record is offered.

Why 250 ms: each drain has fixed costs (a subscriber's numpy calls per group, a cold start on the
GIL the loop is using), paid per drain rather than per record. At 50 ms a drain held ~50 identity
answers at c=64 and the hub's thread spent 31-32 us of CPU per request inside the server; at
250 ms, 10 us (perf_analyzer, side by side). Labels never wait for it: feedback drains the hub
before it joins.

Promises:
- ``offer`` never raises; the request path never waits for a subscriber (the lock it takes is
  held elsewhere only while a drain swaps the columns for new ones: two assignments).
- Every offered record is either handed to each subscriber once or counted as dropped.
- ``close`` hands over what is queued, then stops the thread.

What the monitors cost is counted per subscriber (wall and thread CPU seconds) and per drain (a
histogram of how long each hand-over took): a drain holds the GIL for most of its length, so each
one is a stretch in which the event loop runs in slivers, and the requests in flight wait through
it. Long drains show in p99 (identity at c=64: 43 ms with 250 ms drains, 58 ms with 1 s drains of
the same records, 36 ms with the monitors off; perf_analyzer, side by side). Slicing a drain does
not help: the loop loses the drain's CPU whichever way it is cut, and every request in flight
waits through it (one subscriber per turn, 10 rounds: no gain; 64-record slices: much worse).
In the server the monitors' code costs several times what it does called back to back (the log,
544 identity records: 5.8 ms of CPU against 0.84). So the heavy monitors left this process: the
prediction log's writer and live quality run in the monitor process (:mod:`.monitor_remote`),
and the subscribers here only sample and pick; the last one encodes the drain once and sends it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from sluice.server.monitoring.drained import Columns, Drained
from sluice.server.monitoring.finished import Finished
from sluice.server.serving.stats import CumulativeHistogram

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the drain-duration histogram.
DRAIN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

#: What one subscriber is handed: the records finished since the last drain, oldest first.
Subscriber = Callable[[Drained], None]


def grouped(records: Sequence[Finished], *, by_arm: bool = False
            ) -> dict[tuple, Sequence[Finished]]:
    """``records`` by (model, version), or (model, version, arm) with ``by_arm``, each group in
    arrival order (a :class:`~.drained.Drained` in views of itself, from its key runs). A drain
    nearly always holds one model version (and arm): that costs a list pass per field and a
    count, not a key tuple and a dict lookup per record (with it, the hub thread's CPU per
    identity record in drains of 1,000 went 0.87 -> 0.78 us for the log, 0.25 -> 0.20 for
    drift)."""
    if isinstance(records, Drained):
        return records.groups(by_arm=by_arm)
    if not records:
        return {}
    fields = [[r.model for r in records], [r.version for r in records]]
    if by_arm:
        fields.append([r.arm for r in records])
    if all(f.count(f[0]) == len(f) for f in fields):
        return {tuple(f[0] for f in fields): records}
    groups: dict[tuple, list[Finished]] = {}
    for key, record in zip(zip(*fields, strict=True), records, strict=True):
        group = groups.get(key)
        if group is None:
            groups[key] = [record]
        else:
            group.append(record)
    return groups


class MonitorHub:
    """Bounded columns of :class:`Finished` records and the thread that fans them out."""

    def __init__(self, *, capacity: int = 65536, interval_s: float = 0.25) -> None:
        self.capacity = capacity
        self._interval_s = interval_s
        self._columns = Columns()
        #: Held while a record goes into the columns and while they are swapped for new ones.
        self._adding = threading.Lock()
        #: Per model, the share of records whose inputs are kept, and who asked for how much.
        self._inputs_rate: dict[str, float] = {}
        self._inputs_wanted: dict[str, dict[str, float]] = {}
        self._wanting = threading.Lock()
        self._draw = random.Random().random
        self._subscribers: list[tuple[str, Subscriber]] = []
        #: Models with at least one interested subscriber: the request path's only question.
        self._watched: dict[str, int] = {}
        #: Records refused because the queue was full, per model.
        self.dropped: Counter[str] = Counter()
        #: Batches a subscriber raised on, per subscriber name.
        self.failures: Counter[str] = Counter()
        self.delivered = 0
        #: Wall and thread-CPU seconds each subscriber spent on its batches, per name.
        self.seconds: Counter[str] = Counter()
        self.cpu_seconds: Counter[str] = Counter()
        #: How long each drain took, in seconds.
        self.drains = CumulativeHistogram(DRAIN_BUCKETS)
        self._stop = threading.Event()
        #: One drain at a time, so a subscriber is never called from two threads at once.
        self._draining = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- request path (event loop) ----------------------------------------------------------

    def wants(self, model: str) -> bool:
        """True when a finished request of ``model`` should be offered."""
        return model in self._watched

    def offer(self, record: Finished) -> None:
        """Queue ``record`` for the subscribers; counted as dropped when the queue is full."""
        if self._columns.n >= self.capacity:
            self.dropped[record.model] += 1
            return
        rate = self._inputs_rate.get(record.model, 0.0)
        keep = rate >= 1.0 or (rate > 0.0 and self._draw() < rate)
        try:
            with self._adding:
                self._columns.add(record, keep)
        except Exception:  # a record of ours that cannot be kept (a bug): counted, not raised
            self.dropped[record.model] += 1
            log.exception("monitor hub: a record of model '%s' cannot be kept", record.model)

    # -- configuration ----------------------------------------------------------------------

    def watch(self, model: str) -> None:
        """One more subscriber wants ``model``'s records (pair with :meth:`unwatch`)."""
        self._watched[model] = self._watched.get(model, 0) + 1

    def unwatch(self, model: str) -> None:
        left = self._watched.get(model, 0) - 1
        if left > 0:
            self._watched[model] = left
        else:
            self._watched.pop(model, None)

    def want_inputs(self, who: str, model: str, rate: float) -> None:
        """``who`` wants the inputs of ``rate`` of ``model``'s records (0: none any more); the
        hub keeps those of the largest share anyone wants, drawn as each record is offered."""
        with self._wanting:  # the loader's threads and the event loop both ask
            wanted = self._inputs_wanted.setdefault(model, {})
            if rate > 0.0:
                wanted[who] = rate
            else:
                wanted.pop(who, None)
            rates = dict(self._inputs_rate)
            if wanted:
                rates[model] = min(1.0, max(wanted.values()))
            else:
                rates.pop(model, None)
                self._inputs_wanted.pop(model, None)
            self._inputs_rate = rates  # replaced whole: offer reads it without the lock

    def inputs_rate(self, model: str) -> float:
        """The share of ``model``'s records whose inputs are kept."""
        return self._inputs_rate.get(model, 0.0)

    def subscribe(self, name: str, subscriber: Subscriber) -> None:
        """``subscriber`` gets every drained batch from now on (on the hub's thread)."""
        self._subscribers.append((name, subscriber))

    # -- the fan-out thread -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="sluice-monitor", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Hand over what is queued, then stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.drain()

    def drain(self) -> int:
        """Hand every queued record to the subscribers now; how many there were."""
        with self._draining:
            fresh = Columns()
            with self._adding:
                columns, self._columns = self._columns, fresh
            if not columns.n:
                return 0
            batch = Drained(columns, self._inputs_rate)
            started = time.perf_counter()
            for name, subscriber in self._subscribers:
                wall, cpu = time.perf_counter(), time.thread_time()
                try:
                    subscriber(batch)
                except Exception:
                    self.failures[name] += 1
                    log.exception("monitor %s failed on %d records", name, len(batch))
                self.cpu_seconds[name] += time.thread_time() - cpu
                self.seconds[name] += time.perf_counter() - wall
            self.drains.observe(time.perf_counter() - started)
            self.delivered += len(batch)
            return len(batch)

    def _main(self) -> None:
        while not self._stop.wait(self._interval_s):
            started = time.monotonic()
            self.drain()
            # a slow subscriber must not turn the drain into a busy loop
            spent = time.monotonic() - started
            if spent > self._interval_s:
                self._stop.wait(min(spent, 1.0))
