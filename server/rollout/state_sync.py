"""Keeps a router in step with deployment changes other processes persist to its state directory.

Under ``sluice serve --workers N`` every worker has its own
:class:`~sluice.server.rollout.router.Router`, and an Admin RPC lands on one of them (the kernel
picks a process per connection). That worker validates, persists and audits the change; every other
worker's :class:`DeploymentFollower` notices within about ``interval_s`` and serves it too, without
persisting or auditing it again.

Each poll costs one ``os.stat`` of ``deployments.json`` (inode, size, mtime in ns): a save, by
any process, replaces the file. Only when that changed is the file read and parsed, on a worker
thread, and every model whose entry differs is handed to :meth:`Router.adopt`. Since mtime has
the file system's coarse granularity (a few ms), a file modified within ``racy_s`` of the poll
is read again on the next poll even if its signature looks unchanged, as git does with racily
clean index entries: two saves in one tick with the same size and a recycled inode cannot hide.

A read that raced a change of this router's own (its ``revision`` moved while the file was being
read) is thrown away and done again on the next poll, so an older file never undoes a newer
local change. A corrupt file is handled by the store: set aside and replaced by the last good
copy, which every worker then follows; when no usable copy is left, the error is logged once
and the router keeps serving what it has until the file changes again.

Canaries: only the worker whose CanaryController runs a canary drives it (judges its steps and
writes them); the others follow the routes it writes. The gates therefore see the driving
worker's traffic only, about 1/N of the whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from sluice.server.errors import SluiceError
from sluice.server.rollout.deploy_store import DeploymentStore, StoredDeployment
from sluice.server.rollout.router import Router
from sluice.server.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Signature = tuple[int, int, int] | None


class DeploymentFollower:
    """Polls ``store`` every ``interval_s`` seconds and makes ``router`` adopt what changed.

    Owns one task, started by :meth:`start` and cancelled (and awaited) by :meth:`close`;
    :meth:`check` runs one poll now (for tests, or before a change that must see the latest
    state)."""

    def __init__(self, router: Router, store: DeploymentStore, *, interval_s: float = 0.5,
                 racy_s: float = 2.0) -> None:
        self._router = router
        self._store = store
        self._interval_s = interval_s
        self._racy_ns = int(racy_s * 1e9)
        #: Signature of the file as last read; "unread" forces the first poll to read.
        self._seen: Signature | str = "unread"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="deployment-follower")

    async def close(self) -> None:
        """Stop polling; returns once the task has ended (never in the middle of an adopt)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def check(self) -> bool:
        """One poll: True when the file was read and the router brought up to date with it."""
        revision = self._router.revision
        read = await asyncio.to_thread(self._read_if_changed, self._seen)
        if read is None:
            return False
        signature, entries = read
        if self._router.revision != revision:
            return False  # a local change raced the read: read again next time
        self._seen = signature
        if entries is None:
            return False
        for name in sorted(set(entries) | set(self._router.models())):
            self._router.adopt(name, entries.get(name))
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep following: the next change may be readable
                log.exception("deployment state: following other processes' changes failed")

    def _read_if_changed(
        self, seen: Signature | str
    ) -> tuple[Signature, Mapping[str, StoredDeployment] | None] | None:
        """(signature, entries) when the file changed since ``seen`` (entries None when it is
        unusable), else None. Runs on a worker thread."""
        signature = self._store.signature()
        racy = signature is not None and time.time_ns() - signature[2] < self._racy_ns
        if signature == seen and not racy:
            return None
        try:
            return signature, self._store.load_all()
        except (SluiceError, OSError) as exc:
            if signature != seen:  # once per change of the file, not every poll
                log.error("deployment state not followed (kept serving the current one): %s",
                          getattr(exc, "message", exc))
            return signature, None
