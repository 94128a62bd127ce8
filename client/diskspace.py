"""When the disk holding a synced folder cannot take more: full (or over its
quota), or read-only.

Downloads are held back, not attempted, when they would leave less than a
floor of free space (5% of the disk, at most 64 MiB): a download that fills
the disk fails half-way after moving its bytes for nothing, and leaves no
room for the user's own work. An error that says the disk cannot take writes
(``ENOSPC``, ``EDQUOT``, ``EROFS``) ends a ``--once`` sync with that reason
instead of re-planning the same doomed writes, and the status says it; the
next sync, once space returns or the disk is writable, picks up where this
one stopped. Files already there are never touched: every download is staged
and renamed into place only when whole.
"""

from __future__ import annotations

import errno
from pathlib import Path

from client.fs import Disk
from client.output import human_size

FLOOR_BYTES = 64 * 1024 * 1024
FLOOR_SHARE = 0.05
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def room(disk: Disk, folder: Path) -> int:
    """Bytes downloads may still take on ``folder``'s filesystem (free space above the floor)."""
    total, free = disk.disk_usage(folder)
    return free - min(FLOOR_BYTES, int(total * FLOOR_SHARE))


def held_back(needed: int, left: int) -> str:
    return f"not downloaded: the disk is full ({human_size(needed)} needed, {human_size(max(left, 0))} free)"


def full(root: Path, count: int) -> str:
    return (
        f"the disk holding {root} is full: {count} file(s) not downloaded; "
        "free some space and sync again (files already here are untouched)"
    )


def trouble(e: OSError, root: Path) -> str | None:
    """The reason to give when ``e`` means the disk cannot take writes, else None."""
    if e.errno in _FULL:
        return f"the disk holding {root} is full ({e.strerror}); free some space and sync again"
    if e.errno == errno.EROFS:
        return f"{root} is on a read-only file system; nothing was changed; sync again once it is writable"
    return None
