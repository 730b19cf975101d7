"""Keeps one replica's router in step with the fleet's deployment state in etcd.

The etcd counterpart of :class:`~sluice.server.rollout.state_sync.DeploymentFollower`, with the
same interface (start, close, check). Instead of polling a file it reads the whole prefix once
and then watches it from the next revision, so a change any replica commits is applied here as
soon as etcd delivers the event (milliseconds on one network). Each event is applied with
:meth:`Router.adopt`, synchronously on the event loop, together with noting its revision in the
store (the revision the next compare-and-swap of that model expects).

When etcd stops answering (the watch stream breaks, a read fails) the replica keeps serving the
state it applied, :attr:`up` turns False (``sluice_state_store_up``), and the follower tries
again every ``retry_s``: read the prefix whole (so changes missed meanwhile, deletions included,
are applied), then watch again. ``on_applied(model)`` is called after every adopted change (the
canary leadership uses it to pick up canaries other replicas started).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aetcd.exceptions
import aetcd.utils

from sluice.server.errors import SluiceError
from sluice.server.fleet.etcd_store import _ETCD_ERRORS, EtcdDeploymentStore
from sluice.server.rollout.deploy_store import StoredDeployment
from sluice.server.rollout.router import Router
from sluice.server.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class EtcdFollower:
    """Applies the etcd prefix's deployment entries to ``router``; owns one task."""

    def __init__(self, router: Router, store: EtcdDeploymentStore, *, retry_s: float = 0.5,
                 on_applied: Callable[[str], None] | None = None) -> None:
        self._router = router
        self._store = store
        self._retry_s = retry_s
        self.on_applied = on_applied
        #: Whether etcd answered the last read and the watch is established.
        self.up = False
        #: etcd revision of the last snapshot or event applied (0: none yet).
        self.revision = 0
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        store.on_superseded = self._apply

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="etcd-follower")

    async def caught_up(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the prefix has been read and applied once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout_s)
        return self._synced.is_set()

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def check(self) -> bool:
        """Nothing to do: the watch applies every change as etcd delivers it (an admin change
        computed from a state not yet delivered is refused by the compare-and-swap)."""
        return False

    # -- internals ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (SluiceError, *_ETCD_ERRORS) as exc:
                if self.up or failures == 0:
                    log.error("deployment state store %s: %s; serving the last state applied "
                              "(revision %d) and retrying every %gs", self._store.location,
                              getattr(exc, "message", None) or type(exc).__name__,
                              self.revision, self._retry_s)
                failures += 1
            except Exception:  # our bug: log it, keep serving, try again
                log.exception("deployment state store %s: following failed",
                              self._store.location)
            self.up = False
            await asyncio.sleep(self._retry_s)

    async def _follow(self) -> None:
        """Read the prefix whole and apply it, then apply every watch event after it; returns
        (or raises) when the watch ends."""
        entries, revision = await self._store.snapshot()
        prefix = self._store.deployments_prefix.encode()
        watch = await self._store.client.watch(prefix, range_end=aetcd.utils.prefix_range_end(
            prefix), start_revision=revision + 1)
        try:
            for name in sorted(set(entries) | set(self._router.models())):
                found = entries.get(name)
                self._store.note(name, found[0] if found else revision, found and found[1])
                self._apply(name, found[1] if found else None)
            self.revision = revision
            self.up = True
            self._synced.set()
            log.info("deployment state store %s: following from revision %d",
                     self._store.location, revision)
            async for event in watch:
                name = event.kv.key.decode("utf-8", "replace")[len(prefix):]
                entry = None
                if event.kind == "PUT":
                    entry = self._store.parse(event.kv.key, event.kv.value)
                    if entry is None:
                        continue
                self._store.note(name, event.kv.mod_revision, entry)
                self.revision = event.kv.mod_revision
                self._apply(name, entry)
        finally:
            with contextlib.suppress(*_ETCD_ERRORS, RuntimeError):
                await watch.cancel()
        raise aetcd.exceptions.ConnectionFailedError("the watch ended")

    def _apply(self, name: str, entry: StoredDeployment | None) -> None:
        before = self._router.state(name)
        self._router.adopt(name, entry)
        if self.on_applied is not None and self._router.state(name) != before:
            try:
                self.on_applied(name)
            except Exception:
                log.exception("model '%s': reacting to a deployment change failed", name)
