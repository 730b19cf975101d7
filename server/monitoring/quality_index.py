"""Which request a label is for: request id -> (chunk, position) over one model's windows.

Every scored request of a model gets a position, a running count: a chunk's requests hold
``base .. base + len(ids) - 1``. The index maps an id to its newest request's position (a plain
int), and a position finds its chunk by bisection over the chunks' bases. When requests leave
their window, the ids that still name them are deleted, found with one ``map`` of lookups and an
array comparison per leaving range.

Why: the hub's thread adds every scored answer here. The earlier index held a ``(chunk, k)``
tuple per request and deleted each leaving id after a check in a Python loop: ~0.45 us per
request of the hub's thread (both together, identity at drains of 1,000), and ~10,000 tracked
tuples that every full garbage collection walked (on whichever thread allocates: mostly the
event loop). Ints are not tracked; adding is one ``dict.update`` from a ``zip``.

Not thread-safe: :class:`~sluice.server.monitoring.quality.QualityMonitor` holds its lock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from itertools import compress, repeat

import numpy as np

from sluice.server.monitoring.quality_window import Chunk


class RequestIndex:
    """Request id -> the newest request with that id still in one of a model's windows."""

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}
        #: Chunks in position order (some that left too, until pruned) and their bases.
        self._chunks: list[Chunk] = []
        self._bases: list[int] = []
        self._next = 0
        #: Chunks in the list that left their windows.
        self._gone = 0

    def __len__(self) -> int:
        """Ids indexed (never more than the requests in windows: a leaving id goes at once)."""
        return len(self._positions)

    def add(self, chunk: Chunk) -> None:
        """Index ``chunk``'s requests (before its window may push its own oldest out); a
        request with an id seen before hides the earlier one. An empty id is not indexed (an
        answer without an id cannot be labelled)."""
        n = len(chunk.ids)
        chunk.base = base = self._next
        self._next += n
        self._chunks.append(chunk)
        self._bases.append(base)
        self._positions.update(zip(chunk.ids, range(base, base + n), strict=True))
        self._positions.pop("", None)

    def forget(self, gone: list[tuple[Chunk, int, int]]) -> None:
        """Requests ``first:end`` of each (chunk, first, end) left their window (as the window's
        ``add`` and ``evict`` report them); an id that names a later request keeps it."""
        positions = self._positions
        for chunk, first, end in gone:
            if end >= len(chunk.ids):
                chunk.gone = True
                self._gone += 1
            ids = chunk.ids[first:end]
            named = np.fromiter(map(positions.get, ids, repeat(-1, len(ids))), np.int64,
                                len(ids))
            mine = (named == np.arange(chunk.base + first, chunk.base + end)).tolist()
            deque(map(positions.__delitem__, compress(ids, mine)), maxlen=0)
        if self._gone > len(self._chunks) // 2 + 64:  # drop the chunks that left
            self._chunks = [c for c in self._chunks if not c.gone]
            self._bases = [c.base for c in self._chunks]
            self._gone = 0

    def forget_chunks(self, chunks: tuple[Chunk, ...]) -> None:
        """Every request of ``chunks`` left (their window was replaced)."""
        self.forget([(c, c.head, len(c.ids)) for c in chunks])

    def find(self, rid: str) -> tuple[Chunk, int] | None:
        """(chunk, position in it) of the newest request ``rid`` names, or None when it is not
        in a window (never seen, or left)."""
        position = self._positions.get(rid)
        if position is None:
            return None
        chunk = self._chunks[bisect_right(self._bases, position) - 1]
        return chunk, position - chunk.base
