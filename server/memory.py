"""Keep the process's resident memory flat under block traffic, and the
garbage collector off the hot path when many sessions are open.

Blocks are 256 KiB-4 MiB buffers allocated and freed by worker threads;
glibc gives each thread its own arena and keeps freed chunks there, so RSS
creeps up with the number of threads. Two arenas bound that.

Each open session holds a few hundred objects for as long as it lives. With
10,000 of them, CPython's full collections walk millions of objects that are
not garbage, and a burst of allocation (one change pushed to every session)
triggers them: the fan-out took 11.7 s of CPU with the collector, 0.8 s
without. :func:`keep_old_objects_out_of_gc` moves objects that have survived
a minute into the permanent generation (``gc.freeze``), and once an hour
gives them all back for one full collection, so cyclic garbage among them is
still freed (a pause of about a second per 10,000 sessions, hourly).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import sys

_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        pass


async def keep_old_objects_out_of_gc(freeze_every: float = 60.0, collect_every: int = 60) -> None:
    """Run for the server's life: freeze survivors every ``freeze_every``
    seconds, and every ``collect_every`` rounds collect everything once."""
    rounds = 0
    while True:
        await asyncio.sleep(freeze_every)
        rounds += 1
        if rounds % collect_every == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()
