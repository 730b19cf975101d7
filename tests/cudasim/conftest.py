"""The CUDA kernels under Numba's simulator: only with ``NUMBA_ENABLE_CUDASIM=1``.

The simulator replaces ``numba.cuda`` for the whole process when Numba is first imported, so it
cannot be switched on inside the main test run. ``tests/unit/test_cudasim_suite.py`` runs this
directory in a subprocess with the variable set; a plain ``pytest`` run skips it here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return
    skip = pytest.mark.skip(reason="needs NUMBA_ENABLE_CUDASIM=1 (test_cudasim_suite runs it)")
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(skip)
