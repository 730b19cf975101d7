"""Model files sent in a load request (Triton's ``file:<path>`` parameters), written into a
private staging directory and loaded from there.

The staging root is a fresh directory only this process writes (``mkdtemp``: mode 0700), made on
the first staged load. Each staged load gets a directory of its own under it. A path from a
request is checked before anything is written: relative, no empty, '.' or '..' component, no
backslash or NUL, each component at most 255 bytes, and the total of the files' bytes at most
the server's cap. Files are created with O_EXCL | O_NOFOLLOW inside directories made here, so
nothing is written outside the staging directory, and nothing there is a link.

Promises: a model's staged directory is removed when the model is unloaded, when a load replaces
it (staged or not), when its own load fails, and at shutdown (the root with it).
Blocking (file I/O): callers run these on a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sluice.server.errors import InvalidInput, ResourceExhausted

log = logging.getLogger(__name__)

#: Longest path component (Linux's NAME_MAX) and whole path accepted from a request.
_NAME_MAX = 255
_PATH_MAX = 4096


def check_file_path(path: str) -> tuple[str, ...]:
    """The components of ``path`` (a ``file:`` parameter without its prefix), or InvalidInput
    starting with Triton's "Invalid file path"."""
    def bad(why: str) -> InvalidInput:
        shown = path if len(path) <= 80 else path[:77] + "..."
        return InvalidInput(f"Invalid file path 'file:{shown}': {why}")

    if not path or len(path.encode()) > _PATH_MAX:
        raise bad(f"a path is 1 to {_PATH_MAX} bytes")
    if "\0" in path or "\\" in path:
        raise bad("no NUL or backslash")
    if path.startswith("/"):
        raise bad("it must be relative to the model directory")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise bad("no empty, '.' or '..' component (it must stay in the model directory)")
        if len(part.encode()) > _NAME_MAX:
            raise bad(f"a component is longer than {_NAME_MAX} bytes")
    return parts


class StagingArea:
    """Staged model directories, at most one served per model."""

    def __init__(self, max_bytes: int) -> None:
        """``max_bytes``: the most file bytes one load request may carry."""
        self.max_bytes = max_bytes
        self._root: Path | None = None
        self._count = 0
        #: Model -> the staged directory its served versions were loaded from.
        self._served: dict[str, Path] = {}

    def stage(self, name: str, files: Mapping[str, bytes]) -> Path:
        """Write ``files`` (path -> content) into a new directory for model ``name``; returns
        it. Raises InvalidInput for a bad path, ResourceExhausted over the cap (nothing is
        left behind either way)."""
        total = sum(len(content) for content in files.values())
        if total > self.max_bytes:
            raise ResourceExhausted(
                f"model '{name}': the load request carries {total} bytes of files; the limit "
                f"is {self.max_bytes} (--max-load-file-bytes)"
            )
        checked = {path: check_file_path(path) for path in files}
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="sluice-staging-"))
        self._count += 1
        target = self._root / f"{self._count}-{name}"
        os.mkdir(target, 0o700)
        try:
            for path, parts in checked.items():
                _write(target, parts, files[path], path)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def adopt(self, name: str, staged: Path | None) -> None:
        """``staged`` (or None: the repository's own directory) now serves ``name``; the
        directory it replaces is removed."""
        old = self._served.pop(name, None)
        if staged is not None:
            self._served[name] = staged
        if old is not None and old != staged:
            self.discard(old)

    def drop(self, name: str) -> None:
        """``name`` was unloaded: remove its staged directory, if any."""
        self.adopt(name, None)

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def close(self) -> None:
        """Remove everything staged, the root with it."""
        self._served.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


def _write(target: Path, parts: tuple[str, ...], content: bytes, path: str) -> None:
    folder = target
    for part in parts[:-1]:
        folder = folder / part
        if folder.is_symlink() or folder.is_file():
            raise InvalidInput(f"Invalid file path 'file:{path}': '{part}' is also a file")
        if not folder.is_dir():
            os.mkdir(folder, 0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(folder / parts[-1], flags, 0o600)
    except (FileExistsError, IsADirectoryError):
        raise InvalidInput(
            f"Invalid file path 'file:{path}': another file's directory has this name"
        ) from None
    with os.fdopen(fd, "wb") as out:
        out.write(content)
