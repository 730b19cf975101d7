"""Appending whole records to a file so that they survive a crash: the audit trails' one way."""

from __future__ import annotations

import os
from pathlib import Path


def append_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Append ``data`` to ``path`` (created with ``mode``) with O_APPEND, so it lands at the
    end even when something else wrote to the file, retrying a short write (disk full, a
    signal), then fsync. Raises OSError."""
    view = memoryview(data)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
