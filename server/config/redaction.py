"""Filesystem paths out of messages a client reads.

Error text from libraries (onnxruntime, the OS, numpy) names the files it was given, with the
server's own directories in them. A client learns the model, version and file name from our
messages, never where the repository lives: :func:`redact_paths` keeps only the last part of
every absolute path in a message.
"""

from __future__ import annotations

import re

#: An absolute POSIX or Windows path: a '/' (or drive letter and separator) not inside a word,
#: then everything up to a space or quote.
_ABSOLUTE = re.compile(r"(?<![\w.~/\\])(?:[A-Za-z]:)?[/\\][^\s'\"`,;()\[\]]*")


def _last_part(match: re.Match[str]) -> str:
    parts = [part for part in re.split(r"[/\\]", match.group(0)) if part]
    return parts[-1] if parts else "<path>"


def redact_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last part (``/srv/models/m/1/model.onnx``
    becomes ``model.onnx``); relative names and everything else are left as they are."""
    if "/" not in text and "\\" not in text:
        return text
    return _ABSOLUTE.sub(_last_part, text)
