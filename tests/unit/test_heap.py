"""The serving process's heap settled after startup (``sluice serve`` calls it once its models
are loaded): what lives then is frozen out of the collector's walks, garbage cycles of startup
are collected first (not frozen for ever), and cycles made later are still collected.

Run in a fresh interpreter: freezing is process-wide, and this test process must not keep it."""

from __future__ import annotations

import json
import subprocess
import sys

_PROGRAM = r"""
import gc, json, weakref
from sluice.server.heap import freeze_startup_heap

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

kept = [Node() for _ in range(1000)]
startup_garbage = cycle()  # unreachable already, but a cycle: only the collector frees it
gc.disable()  # no automatic collection may free it first
frozen = freeze_startup_heap()
tracked_after_freeze = len(gc.get_objects())
later_garbage = cycle()
collected = gc.collect()
print(json.dumps({
    "frozen": frozen, "tracked_after_freeze": tracked_after_freeze,
    "startup_garbage_freed": startup_garbage() is None,
    "later_garbage_freed": later_garbage() is None,
    "kept_alive": all(type(n) is Node for n in kept),
}))
"""


def test_startup_objects_are_frozen_startup_garbage_freed_and_later_cycles_still_collected():
    done = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True,
                          check=True, timeout=60)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["frozen"] > 1000  # the 1000 kept nodes and the interpreter's own objects
    assert got["tracked_after_freeze"] < 100  # the collector now walks almost nothing
    assert got["startup_garbage_freed"]  # collected before the freeze, not frozen for ever
    assert got["later_garbage_freed"]
    assert got["kept_alive"]
