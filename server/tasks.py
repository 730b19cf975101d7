"""Ending background asyncio tasks the one way every long-lived part of the server ends its own
(a follower's poll, a leader's campaign, a publisher's timer, a file watcher)."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` (None: nothing to do) and return once it has ended; its cancellation is
    not an error here (anything else it raises while ending propagates)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
