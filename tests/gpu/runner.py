"""Run a GPU test module's ``test_*`` functions without pytest (the GPU machine may lack it)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def run_tests(namespace: dict[str, Any], enabled: bool,
              teardown: Callable[[], None] | None = None) -> None:
    """Run every callable ``test_*`` in ``namespace`` in name order, print PASS/FAIL per test,
    then exit 1 if any failed (0 with nothing to run when not ``enabled``)."""
    if not enabled:
        print("no CUDA GPU visible to numba: nothing to run")
        sys.exit(0)
    tests = [v for k, v in sorted(namespace.items()) if k.startswith("test_") and callable(v)]
    failed = 0
    try:
        for test in tests:
            try:
                test()
                print(f"PASS {test.__name__}")
            except Exception as exc:  # report every test, then fail the run
                failed += 1
                print(f"FAIL {test.__name__}: {type(exc).__name__}: {exc}")
    finally:
        if teardown is not None:
            teardown()
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
