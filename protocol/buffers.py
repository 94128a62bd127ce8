"""Big receive buffers used again once nobody refers to them.

A block arriving over a socket is read into a buffer of its own (no copy
through a stream buffer). A fresh ``bytearray`` of a few MiB costs a zero
fill and a page fault per page before the first byte lands, which for a
device receiving a GiB was several per cent of its CPU; a buffer used before
costs neither. :class:`Keeper` holds a few such buffers, process-wide, and
hands one out again only when nothing but the keeper refers to it (no view
of it, no variable: CPython counts references exactly), so a frame handed to
its reader stays intact for as long as anybody holds it, and memory is
bounded by ``count`` buffers whatever the traffic. When none is free, the
caller makes its own (or reads some other way): the keeper never waits.
Any buffer type will do (``make`` makes one of a given size): the server's
direct-I/O buffers are page-aligned mappings kept the same way
(``protocol.directio``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sized
from typing import Generic, TypeVar

__all__ = ["Keeper"]

B = TypeVar("B", bound=Sized)

_IDLE_REFS = 3  # sys.getrefcount of a kept buffer nobody else refers to: the list, a variable, the argument


class Keeper(Generic[B]):
    """At most ``count`` buffers of ``size`` bytes, each made by ``make``. With
    ``idle_s``, the buffers beyond ``keep`` are let go (the memory given back)
    once none was taken for that long, so an idle process does not hold them;
    without, they are kept."""

    def __init__(self, make: Callable[[int], B], count: int, size: int, idle_s: float | None = None,
                 keep: int = 0) -> None:  # fmt: skip
        self.make, self.count, self.size, self.idle_s, self.keep = make, count, size, idle_s, keep
        self._kept: list[B] = []
        self._lock = threading.Lock()
        self._last = 0.0  # when a buffer was last taken
        self._timer: threading.Timer | None = None
        self.taken = 0  # buffers handed out (counted for tests and benchmarks)

    def take(self, n: int) -> B | None:
        """A buffer of at least ``n`` bytes that nobody else refers to, if one is free."""
        if n > self.size:
            return None
        with self._lock:
            i = self._idle(self._kept, n)
            if i >= 0:
                buf = self._kept[i]
            elif len(self._kept) < self.count:
                buf = self.make(self.size)
                self._kept.append(buf)
            else:
                return None
            self.taken += 1
            self._last = time.monotonic()
            if self.idle_s is not None and self._timer is None:
                self._release_later(self.idle_s)
            return buf

    def held(self) -> int:
        """How many buffers the keeper holds now (free or in use)."""
        with self._lock:
            return len(self._kept)

    def release_idle(self) -> None:
        """Let go of the kept buffers nobody refers to now, all but ``keep``."""
        with self._lock:
            left: list[B] = []
            idle = 0
            for buf in self._kept:
                if sys.getrefcount(buf) > _IDLE_REFS:  # (the list, ``buf`` and the argument)
                    left.append(buf)
                elif idle < self.keep:
                    left.append(buf)
                    idle += 1
            self._kept = left

    @staticmethod
    def _idle(kept: list[B], n: int) -> int:
        # by index: enumerate() reuses its result tuple, which would still refer to the last buffer
        for i in range(len(kept)):
            buf = kept[i]
            if len(buf) >= n and sys.getrefcount(buf) <= _IDLE_REFS:
                return i
        return -1

    def _release_later(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        assert self.idle_s is not None
        with self._lock:
            self._timer = None
            left = self.idle_s - (time.monotonic() - self._last)
            if left > 0:  # taken since: look again when it will have been idle long enough
                self._release_later(left)
                return
        self.release_idle()
        with self._lock:
            if len(self._kept) > self.keep and self._timer is None:  # some still in use: try again later
                self._release_later(self.idle_s)
