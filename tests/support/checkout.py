"""Make ``import sluice`` load this checkout, in the test process and in every process it starts.

server/, proto/, kernels/ and clients/ are imported as ``sluice.server``, ``sluice.proto``, ...,
a namespace package with no folder of its own (pyproject.toml maps the folders). An installed
Sluice would otherwise answer: an editable install of another checkout (a git worktree run with
the main checkout's virtual environment) or a wheel. ``.ci/pythonpath`` holds one relative link,
``sluice -> ../..``, so that directory first on the path makes ``sluice.server`` this checkout's
server/. Subprocesses (servers, workers, lint-imports) inherit it through ``PYTHONPATH``.

Without pytest, the same is ``PYTHONPATH=<checkout>/.ci/pythonpath:<checkout>`` (the second
entry for loadtests/ and tests/, which keep their own names).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The directory whose ``sluice`` entry links to :data:`ROOT`.
PYTHONPATH_DIR = ROOT / ".ci" / "pythonpath"


def use_this_checkout() -> None:
    """Put :data:`PYTHONPATH_DIR` first on ``sys.path`` and ``PYTHONPATH``, then check that
    ``sluice.server`` is this checkout's (raises RuntimeError naming both places if a
    ``sluice`` imported earlier points elsewhere). Idempotent."""
    entry = str(PYTHONPATH_DIR)
    sys.path[:] = [entry, *(p for p in sys.path if p != entry)]
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join([entry, *(p for p in inherited if p and p != entry)])
    import sluice.server

    found = Path(sluice.server.__file__).resolve().parent
    if found != ROOT / "server":
        raise RuntimeError(f"sluice.server comes from {found}, not from the checkout under test "
                           f"({ROOT / 'server'}): something imported it before {entry} was put "
                           "first on the path")
