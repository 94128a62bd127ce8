"""A deterministic asyncio loop: time is virtual and jumps to the next timer
when every task is waiting, so a simulated minute takes no real time and the
same program always runs in the same order. No threads and no real I/O may
happen under it (the simulated disk runs blocking calls inline)."""

from __future__ import annotations

import asyncio
import selectors
from datetime import UTC, datetime
from typing import Any

EPOCH = 1_790_000_000.0  # the simulated wall clock starts here (2026-09)


class Deadlock(RuntimeError):
    """Every task waits on something that no timer will bring."""


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: SimLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise Deadlock("every task is waiting and no timer is set")
        self.loop.now += max(timeout, 0.0)
        return []


class SimLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self.now


class SimClock:
    """The engine's :class:`client.clock.Clock` on a :class:`SimLoop`."""

    def __init__(self, loop: SimLoop) -> None:
        self.loop = loop

    def monotonic(self) -> float:
        return self.loop.now

    def time(self) -> float:
        return EPOCH + self.loop.now

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC).replace(tzinfo=None)

    def time_ns(self) -> int:
        return int(self.time() * 1e9)
