"""The clock the sync engine reads, as an interface: the system's, or (in the
deterministic simulation, ``tests/sim``) a virtual one that only moves when
every task is waiting. Sleeping is asyncio's, so it follows the event loop's
own clock: the simulation runs the engine on a loop whose time is virtual."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...  # seconds since the epoch
    def now(self) -> datetime: ...  # local time, for names people read (conflicted copies)


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)
    now = staticmethod(datetime.now)
