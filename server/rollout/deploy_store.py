"""Durable deployment state and the audit log, in one directory.

Layout of ``state_dir`` (created on the first change, so a server that never changes a
deployment writes nothing)::

    deployments.json           {"format": 1, "models": {model: entry}}: the current state
    deployments.previous.json  the document as it was before the last save (last good copy)
    audit.jsonl                one JSON object per change, appended, never rewritten

An entry is ``{"state": DeploymentState.to_json(), "history": [older states, newest first],
"yaml_sha256": hash of the deployment.yaml the state was derived from, or null}``.

Every write is atomic: a temp file in the same directory, flushed and fsynced, ``os.replace``d
over the target, then the directory fsynced, so a crash leaves either the old or the new file,
never a torn one. A ``deployments.json`` that cannot be parsed (edited by hand, damaged on disk)
is refused: it is moved aside to ``deployments.json.corrupt-<unix time>`` (never overwritten,
so nothing is lost for a post-mortem), an error naming the file and the problem is logged, and
the last good copy (``deployments.previous.json``) becomes current again. Only when that copy is
unusable as well does loading fail with :class:`DeploymentStateError`.

Several processes may share one directory (``sluice serve --workers N``). Writers serialize on
an advisory lock (``fcntl.flock`` of ``deployments.lock``): a save re-reads the file under the
lock and replaces only its own model's entry, so no process loses another's change, and with
``expect`` it refuses (:class:`DeploymentConflict`) a change computed from a state that another
process has replaced meanwhile. Readers take no lock (the file is only ever replaced whole),
except to set a corrupt file aside, so two processes never both "restore" it. Audit records are
appended under the same lock, each as one ``write`` to an ``O_APPEND`` descriptor. Other
processes notice saves through :meth:`DeploymentStore.signature` (see
:mod:`sluice.server.rollout.state_sync`).

Every method blocks on file I/O: call them through ``asyncio.to_thread`` from the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sluice.server.appendfile import append_durably
from sluice.server.errors import Code, SluiceError
from sluice.server.rollout.deployment import DeploymentState

log = logging.getLogger(__name__)

FORMAT = 1
#: Rollback history kept per model (older states are dropped).
HISTORY_LIMIT = 32


class DeploymentStateError(SluiceError):
    """The persisted deployment state cannot be used; the message names the file and why."""

    code = Code.FAILED_PRECONDITION


class DeploymentConflict(SluiceError):
    """Another process changed the model's deployment after this one read it; nothing was
    written. ``current`` is the model's entry on disk now (None: it has none)."""

    code = Code.FAILED_PRECONDITION

    def __init__(self, message: str, current: StoredDeployment | None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True, slots=True)
class StoredDeployment:
    """One model's persisted entry."""

    state: DeploymentState
    #: States to roll back to, newest first.
    history: tuple[DeploymentState, ...] = ()
    #: sha256 of the deployment.yaml text ``state`` descends from; None when there was none.
    yaml_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.to_json(),
            "history": [s.to_json() for s in self.history[:HISTORY_LIMIT]],
            "yaml_sha256": self.yaml_sha256,
        }

    @classmethod
    def from_json(cls, data: Any) -> StoredDeployment:
        if not isinstance(data, Mapping) or "state" not in data:
            raise ValueError("must be an object with a 'state'")
        history = data.get("history") or []
        if not isinstance(history, list):
            raise ValueError("history: must be a list")
        digest = data.get("yaml_sha256")
        if digest is not None and not isinstance(digest, str):
            raise ValueError("yaml_sha256: must be a string or null")
        return cls(
            _state(data["state"], "state"),
            tuple(_state(s, f"history[{i}]") for i, s in enumerate(history)),
            digest,
        )


class DeploymentStore:
    """Reads and atomically writes ``state_dir``'s deployment files; appends audit records."""

    FILE = "deployments.json"
    PREVIOUS = "deployments.previous.json"
    AUDIT = "audit.jsonl"
    LOCK = "deployments.lock"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / self.FILE
        self.previous_path = self.state_dir / self.PREVIOUS
        self.audit_path = self.state_dir / self.AUDIT
        self.lock_path = self.state_dir / self.LOCK
        #: The last refusal (file and problem), or None; for status pages and tests.
        self.problem: str | None = None
        self._lock = threading.Lock()

    def load_all(self) -> dict[str, StoredDeployment]:
        """Every model's persisted entry (empty when nothing was ever saved).

        Raises DeploymentStateError when ``deployments.json`` is unusable and so is the last
        good copy; the message names both files and what is wrong with them.
        """
        with self._lock:
            try:  # no file lock needed: the file is only ever replaced whole
                return _parse(self.path)
            except FileNotFoundError:
                return {}
            except ValueError:
                pass
            with self._file_lock():  # setting a corrupt file aside writes: one process at a time
                return self._read()

    def load(self) -> dict[str, DeploymentState]:
        """The current state of every persisted model (see :meth:`load_all`)."""
        return {name: entry.state for name, entry in self.load_all().items()}

    def save(
        self,
        model: str,
        state: DeploymentState,
        *,
        history: tuple[DeploymentState, ...] = (),
        yaml_sha256: str | None = None,
        expect: DeploymentState | None = None,
    ) -> None:
        """Persist ``model``'s entry atomically. Under the directory's file lock the document is
        read again (other processes may have saved since), only ``model``'s entry is replaced,
        and the document read becomes the last good copy.

        With ``expect``, raise DeploymentConflict and write nothing unless ``model``'s state on
        disk is still ``expect`` (a model without an entry has the empty state). On an OSError
        nothing on disk changed and the error propagates."""
        entry = StoredDeployment(state, tuple(history[:HISTORY_LIMIT]), yaml_sha256)
        with self._lock, self._file_lock():
            current = self._read()
            found = current.get(model)
            if expect is not None and expect.to_json() != (
                found.state if found is not None else DeploymentState()
            ).to_json():
                raise DeploymentConflict(
                    f"model '{model}': its deployment was changed by another server process "
                    "meanwhile; this process has loaded the new state now: retry the change",
                    found,
                )
            _write_atomic(self.previous_path, _document(current))
            _write_atomic(self.path, _document({**current, model: entry}))

    def signature(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime in ns) of ``deployments.json``, None when it does not exist.
        Every save replaces the file, so a save by any process changes it (mtime has the file
        system's coarse granularity: see :mod:`sluice.server.rollout.state_sync` for the racy
        case)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def audit(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record`` (model, action, caller, reason, before, after, ...) to audit.jsonl
        with the wall-clock time (ISO-8601 UTC and unix seconds) and fsync; returns the line's
        object."""
        now = time.time()
        line = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "unix": round(now, 6),
            **record,
        }
        data = (json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        # The file lock orders records between Sluice processes; O_APPEND puts each at the end
        # of the file even if something else (a human, a rotation tool) wrote to it.
        with self._lock, self._file_lock():
            append_durably(self.audit_path, data, 0o666)
        return line

    def read_audit(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first (a torn last line from a crash is skipped)."""
        if not self.audit_path.exists():
            return []
        records = []
        for text in self.audit_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(text))
            except ValueError:
                continue
        return records

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Hold the directory's advisory lock (creating the directory and the lock file). Every
        process that writes the state or the audit log holds it while it does."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock (also if this process dies)

    def _read(self) -> dict[str, StoredDeployment]:
        """The entries on disk, a corrupt file set aside. Call with the file lock held."""
        if not self.path.exists():
            return {}
        try:
            return _parse(self.path)
        except ValueError as exc:
            problem = f"{self.path}: {exc}"
        # Refuse the damaged file but lose nothing: keep it aside and go back to the last good
        # copy, which every save wrote before replacing the current file.
        try:
            entries = _parse(self.previous_path)
        except FileNotFoundError:
            raise DeploymentStateError(
                f"deployment state {problem}; no last good copy {self.previous_path} exists. "
                "Fix or remove the file to start."
            ) from None
        except ValueError as exc:
            raise DeploymentStateError(
                f"deployment state {problem}; the last good copy is unusable too "
                f"({self.previous_path}: {exc}). Fix or remove the files to start."
            ) from None
        aside = self.path.with_name(f"{self.FILE}.corrupt-{int(time.time())}")
        os.replace(self.path, aside)
        _write_atomic(self.path, _document(entries))
        self.problem = f"refused {problem}; kept it as {aside}; restored {self.previous_path}"
        log.error("deployment state %s", self.problem)
        return entries


def _parse(path: Path) -> dict[str, StoredDeployment]:
    """The entries in ``path``; ValueError says what is wrong (FileNotFoundError passes)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                         ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a format-{FORMAT} deployment document")
    models = data.get("models")
    if not isinstance(models, dict):
        raise ValueError("'models' must be an object")
    entries = {}
    for name, entry in models.items():
        try:
            entries[name] = StoredDeployment.from_json(entry)
        except ValueError as exc:
            raise ValueError(f"models.{name}: {exc}") from None
    return entries


def _state(data: Any, where: str) -> DeploymentState:
    try:
        return DeploymentState.from_json(data)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _document(entries: Mapping[str, StoredDeployment]) -> str:
    return json.dumps(
        {"format": FORMAT, "models": {name: e.to_json() for name, e in sorted(entries.items())}},
        indent=1, allow_nan=False,
    ) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old or the new file whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename itself lives in the directory: fsync it so the new name survives a crash.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
