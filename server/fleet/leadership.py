"""One canary driver per fleet: the replica that holds an etcd lock drives every canary.

The lock is aetcd's own primitive (:meth:`aetcd.Client.lock`): a key under the prefix created
in a transaction only while it is absent, attached to a lease of ``ttl_s`` seconds. The holder
keeps the lease alive every ``ttl_s / 3``; the others wait for the key's deletion (a watch),
which etcd performs when the holder releases the lock (a clean shutdown) or its lease expires
(the holder died or lost etcd), so a canary resumes on another replica within ``ttl_s`` of its
driver's death. The canary's progress (its current step) lives in the deployment state, so the
new leader resumes at that step with a fresh interval (:meth:`CanaryController.sync`).

Promises: a replica drives only while it holds the lock; it stops driving (``on_change(False)``)
as soon as a keep-alive says the lease is gone, or when keep-alives have failed for ``2/3`` of
``ttl_s`` (before etcd can let another replica take the lock), so two replicas never drive the
same canary at once for longer than a keep-alive round trip. Even then every step is a
compare-and-swap: a stale driver's step is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sluice.server.fleet.etcd_store import _ETCD_ERRORS, EtcdDeploymentStore
from sluice.server.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class CanaryLeadership:
    """Campaigns for the fleet's canary-driver lock and holds it; owns one task."""

    def __init__(self, store: EtcdDeploymentStore, *, ttl_s: int,
                 on_change: Callable[[bool], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl_s = max(1, int(ttl_s))
        self._on_change = on_change
        self._clock = clock
        self.key = f"{store.location.prefix}/leader/canary".encode()
        #: Whether this replica holds the lock now.
        self.is_leader = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="canary-leadership")

    async def close(self) -> None:
        """Stop campaigning; a leader stops driving and releases the lock (so another replica
        takes over at once, not after the lease time)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            lock: Any = None
            try:
                lock = self._store.client.lock(self.key, ttl=self._ttl_s)
                if await lock.acquire(timeout=self._ttl_s):
                    await self._lead(lock)
            except asyncio.CancelledError:
                raise
            except _ETCD_ERRORS:
                await asyncio.sleep(min(1.0, self._ttl_s / 3))  # etcd down: try again soon
            except Exception:
                log.exception("canary leadership: campaigning failed")
                await asyncio.sleep(self._ttl_s / 3)

    async def _lead(self, lock: Any) -> None:
        """Hold the lock, keeping its lease alive, until it is lost or this task is cancelled."""
        last_kept = self._clock()
        await self._set(True)
        try:
            while True:
                await asyncio.sleep(self._ttl_s / 3)
                try:
                    reply = await lock.refresh()
                except _ETCD_ERRORS:
                    if self._clock() - last_kept >= self._ttl_s * 2 / 3:
                        log.warning("canary leadership: lease not kept alive for %.1fs; "
                                    "no longer driving canaries", self._clock() - last_kept)
                        return
                    continue
                if reply is None or reply.TTL <= 0:
                    log.warning("canary leadership: lease expired; no longer driving canaries")
                    return
                last_kept = self._clock()
        finally:
            await self._set(False)
            with contextlib.suppress(*_ETCD_ERRORS):
                await asyncio.shield(self._release(lock))

    async def _release(self, lock: Any) -> None:
        await lock.release()
        if lock.lease is not None:
            await lock.lease.revoke()

    async def _set(self, leader: bool) -> None:
        self.is_leader = leader
        log.info("canary leadership: %s", "driving the fleet's canaries" if leader
                 else "not the canary driver")
        try:
            await self._on_change(leader)
        except Exception:
            log.exception("canary leadership: reacting to the change failed")
