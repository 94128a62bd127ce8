"""Keep the process's resident memory flat under block traffic.

Blocks are 256 KiB-4 MiB buffers allocated and freed by worker threads;
glibc gives each thread its own arena and keeps freed chunks there, so RSS
creeps up with the number of threads. Two arenas bound that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
