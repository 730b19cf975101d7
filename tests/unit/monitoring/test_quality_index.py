"""The request index against the plain one it replaced: a dict of id -> (chunk, k), updated on
every add and pruned of each leaving request that it still names."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.server.monitoring.quality_index import RequestIndex
from sluice.server.monitoring.quality_window import Chunk


def _chunk(ids: list[str]) -> Chunk:
    return Chunk(None, ids, np.arange(len(ids) + 1), np.zeros(len(ids), np.int64), None, 0.0)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_finds_what_a_dict_pruned_request_by_request_finds(seed):
    """Two windows (as a canary's two arms), ids reused within and across them, requests
    leaving from each window's front in cuts that end inside chunks or at their ends, and a
    window replaced now and then."""
    rng = np.random.default_rng(seed)
    index = RequestIndex()
    reference: dict[str, tuple[Chunk, int]] = {}
    windows: list[list[Chunk]] = [[], []]
    pool = [f"r{i}" for i in range(40)] + [""]
    for step in range(400):
        window = windows[int(rng.integers(2))]
        ids = [pool[i] for i in rng.integers(len(pool), size=int(rng.integers(0, 6)))]
        chunk = _chunk(ids)
        index.add(chunk)
        reference.update({rid: (chunk, k) for k, rid in enumerate(ids)})
        reference.pop("", None)
        window.append(chunk)
        gone = []
        for w in windows:  # the oldest requests of a window leave
            cut = int(rng.integers(0, 4))
            while cut and w:
                oldest = w[0]
                stop = min(len(oldest.ids), oldest.head + cut)
                gone.append((oldest, oldest.head, stop))
                cut -= stop - oldest.head
                oldest.head = stop
                if stop == len(oldest.ids):
                    w.pop(0)
                else:
                    break
        index.forget(gone)
        for c, first, end in gone:
            for k in range(first, end):
                if reference.get(c.ids[k]) == (c, k):
                    del reference[c.ids[k]]
        if step % 7 == 0 and windows[1]:  # a window replaced: all its requests leave
            index.forget_chunks(tuple(windows[1]))
            for c in windows[1]:
                for k in range(c.head, len(c.ids)):
                    if reference.get(c.ids[k]) == (c, k):
                        del reference[c.ids[k]]
            windows[1] = []
        for rid in pool:
            found = index.find(rid)
            expected = reference.get(rid)
            assert (found[0] is expected[0] and found[1] == expected[1]
                    if found is not None and expected is not None else found is expected), (
                step, rid)
        assert len(index) <= sum(len(c.ids) - c.head for w in windows for c in w)
