"""A model directory may hold links, but none that leads outside the model repository.

Model names are checked before a path is built from them (``check_model_name``), version
directories are numbers and model file names are plain names (``config.pbtxt``'s
``default_model_filename``); what is left is a link: ``models/m -> /etc``, ``m/1 -> /home``,
``m/1/model.onnx -> /secrets/x``. :func:`check_contained` refuses a model in which any entry
resolves outside the repository, before any file of it is read (a config that is a link to
another file would otherwise have its parse errors quote that file).
"""

from __future__ import annotations

import os
from pathlib import Path

from sluice.server.errors import ModelLoadError

_OUTSIDE = "is a link to a place outside the model repository"


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def check_contained(root: Path, model_dir: Path, name: str) -> None:
    """Raise ModelLoadError when ``model_dir`` (of model ``name``) or any entry under it
    resolves outside ``root``. The message names the entry by its place in the model ("'model.onnx'
    in '1'"), never a directory of the server's. Blocking (walks the model directory)."""
    real_root = os.path.realpath(root)
    if not _inside(str(model_dir), real_root):
        raise ModelLoadError(f"model '{name}': its directory {_OUTSIDE}")
    for folder, dirs, files in os.walk(model_dir):  # links to folders are listed, not entered
        for entry in (*dirs, *files):
            full = os.path.join(folder, entry)
            if os.path.islink(full) and not _inside(full, real_root):
                parts = Path(os.path.relpath(full, model_dir)).parts
                place = " in ".join(f"'{part}'" for part in reversed(parts))
                raise ModelLoadError(f"model '{name}': {place} {_OUTSIDE}")
