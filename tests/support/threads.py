"""Waiting on work that runs on threads (the batcher's instances), from a test's event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Yield to the loop until ``condition()`` holds; AssertionError after ``timeout_s``."""
    limit = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > limit:
            raise AssertionError(f"still waiting after {timeout_s} s for {what or condition}")
        await asyncio.sleep(0.001)


def block_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Wait for ``condition()`` without yielding to the event loop (it stays blocked)."""
    limit = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > limit:
            return False
        time.sleep(0.001)
    return True


def burn_cpu(seconds: float) -> None:
    """Spin this thread until it has used ``seconds`` of CPU (its own, not the process's)."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass
