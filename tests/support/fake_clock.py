"""A clock the test moves by hand (``clock.now += 2.0``), for parts handed their clock: the batcher
and admission read it where they would read ``time.monotonic()``, the client's retry policy
where it would read its clock."""

from __future__ import annotations


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
