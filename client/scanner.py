"""Finding what is on disk: walks the sync folder without following links,
applies ignore rules, and hashes only files whose size, mtime or inode
changed since the state last saw them.

A file that is still being written (modified in the last ``SETTLE_S``, or
changed while it was hashed), vanished or unreadable is *skipped*: reported,
and kept out of this round's plan, never taken for deleted.
"""

from __future__ import annotations

import os
import stat as st
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from client.planner import Node
from client.state import Observed
from protocol.chunking import chunk_stream
from protocol.errors import ProtocolError
from protocol.hashing import content_hash
from protocol.paths import validate_path

SETTLE_S = (
    float(os.environ.get("FERRY_SETTLE_MS", "100")) / 1000
)  # modified more recently: still being written
INTERNAL_PREFIX = ".ferry-"  # .ferry-root marker, .ferry-staging/
BUILTIN_IGNORES = ["*.swp", "~$*", ".DS_Store", "Thumbs.db", "*.tmp", ".ferry-*"]
IGNORE_FILE = ".ferryignore"


@dataclass
class Scan:
    tree: dict[str, Node] = field(default_factory=dict)
    observed: dict[str, Observed] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why (reported in status)
    unstable: set[str] = field(default_factory=set)  # try again shortly
    renamed: list[tuple[str, str]] = field(default_factory=list)  # name collisions resolved on disk


def load_ignores(root: Path) -> pathspec.GitIgnoreSpec:
    lines = list(BUILTIN_IGNORES)
    try:
        lines += (root / IGNORE_FILE).read_text(errors="replace").splitlines()
    except OSError:
        pass
    return pathspec.GitIgnoreSpec.from_lines(lines)


def hash_file(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return content_hash(b.hash for b in chunk_stream(f))


def is_ignored(spec: pathspec.GitIgnoreSpec, path: str, is_dir: bool) -> bool:
    rel = path[1:] + ("/" if is_dir else "")
    return spec.match_file(rel)


def scan(
    root: Path, known: dict[str, Observed], conflict_name: Callable[[str], str], now: float | None = None
) -> Scan:
    """Walk ``root``; ``known`` is what the state observed last time (for cheap change detection)."""
    out = Scan()
    spec = load_ignores(root)
    now = time.time() if now is None else now
    _walk(root, "/", spec, known, conflict_name, now, out)
    return out


def _walk(
    folder: Path, prefix: str, spec: pathspec.GitIgnoreSpec, known: dict[str, Observed],
    conflict_name: Callable[[str], str], now: float, out: Scan,
) -> None:  # fmt: skip
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        out.skipped[prefix] = f"unreadable folder: {e.strerror}"
        return
    seen: set[str] = set()
    for entry in entries:
        name = entry.name
        nfc = unicodedata.normalize("NFC", name)
        if nfc != name or nfc in seen:
            # another form of a name already here (NFC vs NFD): keep both, rename this one
            target = nfc if nfc not in seen and not (folder / nfc).exists() else conflict_name(prefix + nfc)
            target = target.rsplit("/", 1)[-1]
            os.rename(entry.path, folder / target)
            out.renamed.append((prefix + name, prefix + target))
            name = target
            nfc = unicodedata.normalize("NFC", target)
        seen.add(nfc)
        path = (prefix if prefix == "/" else prefix + "/") + nfc
        try:
            validate_path(path)
        except ProtocolError as e:
            out.skipped[path] = f"name cannot be synced: {e.message}"
            continue
        try:
            info = os.lstat(folder / name)
        except OSError as e:
            out.skipped[path] = f"vanished or unreadable: {e.strerror}"
            continue
        if st.S_ISLNK(info.st_mode):
            if not is_ignored(spec, path, False):
                out.skipped[path] = "symbolic link (not followed)"
            continue
        is_dir = st.S_ISDIR(info.st_mode)
        if is_ignored(spec, path, is_dir):
            continue
        if is_dir:
            out.tree[path] = Node("dir")
            _walk(folder / name, path, spec, known, conflict_name, now, out)
        elif st.S_ISREG(info.st_mode):
            _file(folder / name, path, info, known.get(path), now, out)
        else:
            out.skipped[path] = "not a regular file (device, socket or pipe)"


def _file(disk: Path, path: str, info: os.stat_result, known: Observed | None, now: float, out: Scan) -> None:
    executable = bool(info.st_mode & st.S_IXUSR)
    if known and (known.size, known.mtime_ns, known.inode) == (info.st_size, info.st_mtime_ns, info.st_ino):
        digest = known.content_hash
    elif now - info.st_mtime_ns / 1e9 < SETTLE_S:
        out.unstable.add(path)
        out.skipped[path] = "still being written"
        return
    else:
        try:
            digest = hash_file(disk)
            after = os.stat(disk)
        except OSError as e:
            out.skipped[path] = f"vanished or unreadable: {e.strerror}"
            return
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (info.st_size, info.st_mtime_ns, info.st_ino):
            out.unstable.add(path)
            out.skipped[path] = "changed while it was read"
            return
    out.tree[path] = Node("file", digest, executable)
    out.observed[path] = Observed(info.st_size, info.st_mtime_ns, info.st_ino, digest, executable)
