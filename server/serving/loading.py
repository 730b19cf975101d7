"""Loading many models at once: side by side, each one waiting only for the models it names.

At start the server loads every startup model this way while it already answers (see
:meth:`sluice.server.app.Server.start`). A load runs on a loader thread (the repository's), so one
slow load, a Numba compile on a cold start, holds back only the models that name it (a pipeline's
steps, a ``fallback_model``), and every model serves as soon as its own load ends.

Promises:

- every name is loaded (``load`` is awaited for it) at least once;
- a model's load starts only after the loads of the models it names have ended, unless they
  name it back (a cycle: then none of the cycle waits for another, and the loads report what
  they miss);
- a model whose load failed is tried again once the others have been, round after round, until
  a round loads none of those left (an order no config tells still loads, as before);
- the result names each model that did not load, with the message of its last failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping

from sluice.server.errors import SluiceError

log = logging.getLogger(__name__)

#: load(name): load one model; raises SluiceError when it cannot.
Load = Callable[[str], Awaitable[None]]


async def load_in_order(
    names: Collection[str], load: Load, needs: Mapping[str, Collection[str]]
) -> dict[str, str]:
    """Load ``names`` side by side, each after the models ``needs[name]`` lists (names not
    being loaded are not waited for). Returns {name: why} for those that did not load."""
    pending = list(dict.fromkeys(names))
    while True:
        failed = await _round(pending, load, _waits(pending, needs))
        if not failed or len(failed) == len(pending):
            return failed
        pending = [name for name in pending if name in failed]


async def _round(names: list[str], load: Load, waits: dict[str, set[str]]) -> dict[str, str]:
    done = {name: asyncio.Event() for name in names}
    failed: dict[str, str] = {}

    async def one(name: str) -> None:
        if waits[name]:
            log.info("model '%s': waiting for %s", name,
                     ", ".join(f"'{other}'" for other in sorted(waits[name])))
            for other in waits[name]:
                await done[other].wait()
        try:
            await load(name)
        except SluiceError as exc:
            failed[name] = exc.message
        finally:
            done[name].set()

    async with asyncio.TaskGroup() as group:
        for name in names:
            group.create_task(one(name), name=f"load:{name}")
    return failed


def _waits(names: list[str], needs: Mapping[str, Collection[str]]) -> dict[str, set[str]]:
    """For each of ``names``, the others of ``names`` it waits for: what it needs, less any
    model on a cycle back to it."""
    wanted = {name: set(needs.get(name, ())) & set(names) - {name} for name in names}
    placed: set[str] = set()  # models whose waits end: what they need is placed before them
    grew = True
    while grew:
        grew = False
        for name, others in wanted.items():
            if name not in placed and others <= placed:
                placed.add(name)
                grew = True
    # A model left out is on a cycle or behind one: it waits only for models that are placed.
    return {name: others if name in placed else others & placed
            for name, others in wanted.items()}
