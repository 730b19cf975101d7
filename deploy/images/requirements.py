"""Print the runtime requirements of pyproject.toml, one a line, for an image's dependency layer.

    python deploy/images/requirements.py [--extra NAME ...] [--without NAME ...] > requirements.txt

The images install these first (a layer that the source code does not invalidate), then Sluice
itself with ``pip install --no-deps .``. ``--without onnxruntime`` is how Dockerfile.gpu puts
onnxruntime-gpu in place of onnxruntime: both wheels install the same ``onnxruntime`` import
package, so the CPU one must never be installed beside the GPU one (an extra can only add a
requirement, never replace one). Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def project_name(requirement: str) -> str:
    """The distribution name a requirement names, normalized (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], without: list[str]) -> list[str]:
    """``[project] dependencies`` plus the ``extras``, leaving out the names in ``without``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    chosen = list(project["dependencies"])
    for extra in extras:
        chosen += project["optional-dependencies"][extra]
    dropped = {project_name(name) for name in without}
    return [r for r in chosen if project_name(r) not in dropped]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", default=[], metavar="NAME")
    parser.add_argument("--without", action="append", default=[], metavar="NAME")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extra, args.without)))


if __name__ == "__main__":
    main()
