"""How the local filesystem compares names, and which server names it cannot hold.

The server compares paths byte for byte (after NFC), so it may hold both
``/Readme.md`` and ``/README.md`` (written by a Linux device). A
case-insensitive filesystem (the default on macOS and Windows) holds only one
of them: downloading the second would land it on top of the first, and the
next scan would take the first for deleted. So before planning, a client on
such a filesystem finds the server paths that *clash* (equal once folded) and
renames all but one of each group on the server to a conflicted name: both
files are kept, on every device, and each has a path this disk can hold.

Which one keeps the name is decided the same way on every device (the oldest
file, by its server file id), so two case-insensitive devices that resolve the
same clash at once pick the same loser, and the slower one's rename simply
finds it gone.

Unicode normal forms need no such step: every name on the wire is NFC, and the
scanner already keeps an NFC and an NFD twin on disk apart (client.scanner).
"""

from __future__ import annotations

import contextlib
import functools
import os
import unicodedata
import uuid
from collections.abc import Mapping
from pathlib import Path

from client import fs
from client.planner import Node

FORCE_ENV = "FERRY_CASE_INSENSITIVE"  # "1"/"0": skip the probe (odd mounts, and tests on Linux)


def probe_case_insensitive(folder: Path) -> bool:
    """Does the filesystem under ``folder`` treat names differing only in case as one?"""
    forced = os.environ.get(FORCE_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    disk = fs.disk()
    name = f".ferry-probe-{uuid.uuid4().hex}-Aa"
    probe = folder / name
    disk.write_bytes(probe, b"")
    try:
        return disk.exists(folder / name.swapcase())
    finally:
        with contextlib.suppress(FileNotFoundError):
            disk.unlink(probe)


@functools.lru_cache(maxsize=1 << 17)  # every remote path, every cycle, on a folding disk
def fold(path: str) -> str:
    """``path`` as a case-insensitive filesystem compares it (over-folding errs on the safe side)."""
    return unicodedata.normalize("NFC", path).casefold()


def clashes(tree: Mapping[str, Node]) -> list[tuple[str, str]]:
    """``(path, kept)`` pairs: each ``path`` must be renamed so that it no longer
    clashes with ``kept``. Parents first; a folder's contents move along with it,
    so below a renamed folder only names that clash inside it are named."""
    # each path's folded form once the renames above it are done: a renamed
    # folder gets a form no other path has, which its contents inherit
    folded: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    by_depth: dict[int, list[str]] = {}
    for path in tree:
        by_depth.setdefault(path.count("/"), []).append(path)
    for depth in sorted(by_depth):
        groups: dict[str, list[str]] = {}
        for path in by_depth[depth]:
            parent, _, name = path.rpartition("/")
            key = folded.get(parent, fold(parent)) + "/" + fold(name)
            groups.setdefault(key, []).append(path)
        for key, members in sorted(groups.items()):
            members.sort(key=lambda p: (tree[p].file_id or 0, p))
            folded[members[0]] = key
            for path in members[1:]:
                out.append((path, members[0]))
                folded[path] = key + "\0" + path
    return out


def same_file(a: Path, b: Path) -> bool:
    """Are ``a`` and ``b`` one file (two spellings of its name on a folding filesystem)?"""
    return fs.disk().samefile(a, b)
