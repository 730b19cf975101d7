"""load_in_order: models load side by side, each after the models it names, cycles never
deadlock, and a failed load is tried again while a round still makes progress."""

from __future__ import annotations

import asyncio

from sluice.server.errors import ModelLoadError
from sluice.server.serving.loading import load_in_order


class Loads:
    """A load function whose loads the test releases one by one (``gates``); it records when
    each load starts and ends, and fails a load as often as ``failures`` says."""

    def __init__(self, held: tuple[str, ...] = (), failures: dict[str, int] | None = None):
        self.gates = {name: asyncio.Event() for name in held}
        self.failures = dict(failures or {})
        self.events: list[str] = []

    async def __call__(self, name: str) -> None:
        self.events.append(f"start {name}")
        await asyncio.sleep(0)  # a load takes time: the others get to start meanwhile
        if name in self.gates:
            await self.gates[name].wait()
        if self.failures.get(name, 0):
            self.failures[name] -= 1
            self.events.append(f"fail {name}")
            raise ModelLoadError(f"model '{name}': broken")
        self.events.append(f"end {name}")


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_slow_load_holds_back_only_the_models_that_name_it():
    loads = Loads(held=("slow",))
    task = asyncio.create_task(load_in_order(
        ["slow", "pipeline", "other", "fallback_user"], loads,
        {"pipeline": {"slow", "other"}, "fallback_user": {"other"}},
    ))
    await settle()
    # "other" and what needs only it are done; "pipeline" has not started
    assert loads.events == ["start slow", "start other", "end other", "start fallback_user",
                            "end fallback_user"], loads.events
    loads.gates["slow"].set()
    assert await task == {}
    assert loads.events[-3:] == ["end slow", "start pipeline", "end pipeline"]


async def test_names_not_being_loaded_and_self_references_are_not_waited_for():
    loads = Loads()
    assert await load_in_order(["a"], loads, {"a": {"a", "elsewhere"}}) == {}
    assert loads.events == ["start a", "end a"]


async def test_a_cycle_loads_without_waiting_and_what_waits_on_it_still_loads():
    loads = Loads(failures={"a": 9, "b": 9})  # a cycle of fallbacks can never load
    failed = await asyncio.wait_for(
        load_in_order(["a", "b", "c", "d"], loads, {"a": {"b"}, "b": {"a"}, "c": {"a"}}), 10
    )
    assert failed == {"a": "model 'a': broken", "b": "model 'b': broken"}
    # nothing waits for a model of the cycle: round 1 starts all four at once
    assert loads.events[:4] == ["start a", "start b", "start c", "start d"]
    assert "end c" in loads.events and "end d" in loads.events


async def test_a_failed_load_is_tried_again_while_rounds_make_progress():
    loads = Loads(failures={"late": 1, "broken": 99})
    failed = await load_in_order(["late", "broken", "fine"], loads, {})
    assert failed == {"broken": "model 'broken': broken"}
    # round 1: all three; round 2: late (now loads) and broken; round 3: broken alone, no
    # progress, so it stops
    assert loads.events.count("start late") == 2 and "end late" in loads.events
    assert loads.events.count("start broken") == 3
    assert loads.events.count("start fine") == 1
