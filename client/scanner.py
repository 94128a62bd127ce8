"""Finding what is on disk: walks the sync folder without following links,
applies ignore rules, and hashes only files whose size, mtime or inode
changed since the state last saw them.

A file that is still being written (modified in the last ``SETTLE_S`` and
still open for writing, or changed while it was hashed), vanished or unreadable is *skipped*: reported,
and kept out of this round's plan, never taken for deleted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat as st
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from client import fs
from client.planner import Node, with_suffix
from client.state import Observed
from client.transfer import KnownBlocks
from protocol.chunking import chunk_bytes, chunk_hashes
from protocol.errors import ProtocolError
from protocol.hashing import content_hash
from protocol.paths import name_of, validate_path

SETTLE_S = (
    float(os.environ.get("FERRY_SETTLE_MS", "100")) / 1000
)  # modified more recently: still being written
KEEP_BLOCKS_OVER = 1024 * 1024  # bytes: a scan keeps the block list of bigger files it hashes
KEEP_BYTES_UPTO = 64 * 1024  # bytes: a scan keeps the blocks, bytes and all, of smaller files it hashes
KEEP_BYTES_BUDGET = 64 * 1024 * 1024  # bytes of such files one scan keeps at most (memory stays bounded)
# bytes: a changed file this big is told to ``Scan.changing`` before it is hashed
HINT_OVER = 16 * 1024 * 1024
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
    # big files hashed by this scan: their blocks, so an upload need not chunk them again
    blocks: dict[str, KnownBlocks] = field(default_factory=dict)
    # small files hashed by this scan: (size, mtime_ns, inode) and their blocks as (hash, bytes),
    # so an upload need not read them again (at most KEEP_BYTES_BUDGET bytes in all)
    data: dict[str, tuple[tuple[int, int, int], list[tuple[bytes, bytes]]]] = field(default_factory=dict)
    data_bytes: int = 0
    # folder -> the paths directly in it (rescan keeps it from one scan to the next,
    # rather than building it again over the whole tree for every change)
    children: dict[str, set[str]] | None = None
    # called (in the scan's thread) with the path and last observation of a big known file
    # whose size, mtime or inode changed, before the scan reads it
    changing: Callable[[str, Observed], None] | None = field(default=None, repr=False, compare=False)


def load_ignores(root: Path) -> pathspec.GitIgnoreSpec:
    lines = list(BUILTIN_IGNORES)
    try:
        lines += fs.disk().read_bytes(root / IGNORE_FILE).decode(errors="replace").splitlines()
    except OSError:
        pass
    return pathspec.GitIgnoreSpec.from_lines(lines)


def hash_file(path: Path, blocks: list[tuple[int, int, bytes]] | None = None) -> bytes:
    """The file's content hash; ``blocks`` (if given) gets each block's (offset, size, hash)."""
    with fs.disk().open_read(path) as f:
        if blocks is None:
            return content_hash(h for _, _, h in chunk_hashes(f))
        blocks.extend(chunk_hashes(f))
        return content_hash(h for _, _, h in blocks)


def is_ignored(spec: pathspec.GitIgnoreSpec, path: str, is_dir: bool) -> bool:
    rel = path[1:] + ("/" if is_dir else "")
    return spec.match_file(rel)


def scan(
    root: Path, known: Mapping[str, Observed], conflict_name: Callable[[str], str], now: float | None = None,
    changing: Callable[[str, Observed], None] | None = None,
) -> Scan:  # fmt: skip
    """Walk ``root``; ``known`` is what the state observed last time (for cheap change detection)."""
    out = Scan(changing=changing)
    spec = load_ignores(root)
    now = time.time() if now is None else now
    _walk(root, "/", spec, _ByInode(known), conflict_name, now, out)
    return out


def _walk(
    folder: Path, prefix: str, spec: pathspec.GitIgnoreSpec, known: Mapping[str, Observed],
    conflict_name: Callable[[str], str], now: float, out: Scan, shallow: frozenset[str] | set[str] = frozenset(),
) -> None:  # fmt: skip
    """``shallow``: subfolders recorded but not entered (``rescan`` keeps what it knew of them)."""
    disk = fs.disk()
    try:
        entries = sorted(disk.listdir(folder))
    except OSError as e:
        out.skipped[prefix] = f"unreadable folder: {e.strerror}"
        return
    seen: set[str] = set()
    for name in entries:
        nfc = unicodedata.normalize("NFC", name)
        if nfc != name and nfc not in seen and disk.samefile(folder / name, folder / nfc):
            pass  # a normalising filesystem (macOS) lists the NFC name decomposed: one file, no twin
        elif nfc != name or nfc in seen:
            # another form of a name already here (NFC vs NFD): keep both, rename this one
            if nfc not in seen and not disk.exists(folder / nfc):
                target = nfc
            else:
                target = _free_name(folder, _join(prefix, nfc), conflict_name)
            disk.rename(folder / name, folder / target)
            out.renamed.append((_join(prefix, name), _join(prefix, target)))
            name = target
            nfc = unicodedata.normalize("NFC", target)
        seen.add(nfc)
        path = _join(prefix, nfc)
        try:
            validate_path(path)
        except ProtocolError as e:
            out.skipped[path] = f"name cannot be synced: {e.message}"
            continue
        try:
            info = disk.lstat(folder / name)
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
            if path not in shallow:
                _walk(folder / name, path, spec, known, conflict_name, now, out)
        elif st.S_ISREG(info.st_mode):
            _file(folder / name, path, info, known.get(path) or _renamed(known, info), now, out)
        else:
            out.skipped[path] = "not a regular file (device, socket or pipe)"


def _join(folder: str, name: str) -> str:
    return (folder if folder == "/" else folder + "/") + name


def _free_name(folder: Path, path: str, conflict_name: Callable[[str], str]) -> str:
    """A conflicted name for ``path`` that nothing in ``folder`` has yet (renaming
    onto a name taken would replace that file: a twin renamed twice in one second)."""
    name, n = name_of(conflict_name(path)), 1
    while fs.disk().exists(folder / name):
        n += 1
        name = name_of(with_suffix(conflict_name(path), f" {n}"))
    return name


class _ByInode(dict[str, Observed]):
    """What the state observed, plus an index by inode built when first needed."""

    inodes: dict[int, Observed] | None = None


def _renamed(known: Mapping[str, Observed], info: os.stat_result) -> Observed | None:
    """What was observed of this very file under another name: a rename keeps a
    file's inode, size and mtime, so a renamed file (a 100 MiB video, say) needs
    no reading again to be known by its hash, and the planner sees a move at once."""
    if not isinstance(known, _ByInode):
        return None
    if known.inodes is None:
        known.inodes = {o.inode: o for o in known.values()}
    seen = known.inodes.get(info.st_ino)
    return (
        seen if seen is not None and (seen.size, seen.mtime_ns) == (info.st_size, info.st_mtime_ns) else None
    )


def settle_left(disk: Path | str, mtime_ns: int, now: float) -> float:
    """Seconds until the file at ``disk`` counts as written in full: none once it
    was left alone for ``SETTLE_S``, or as soon as no process has it open for
    writing (where the system can tell: :meth:`client.fs.Disk.writers_gone`). So a save that
    closed its file is synced at once, and a writer that pauses with the file
    open is waited for."""
    left = mtime_ns / 1e9 + SETTLE_S - now
    return 0.0 if left <= 0 or fs.disk().writers_gone(disk) else left


def enable_writer_checks() -> None:
    """Let :meth:`client.fs.OsDisk.writers_gone` use Linux file leases in this process. Taking a
    lease arms a signal (SIGIO, fatal by default) for when another process opens
    the file for writing meanwhile; the lease is dropped at once, so the signal
    is only to be ignored. Call from the main thread; elsewhere nothing changes."""
    with contextlib.suppress(ValueError, AttributeError):  # not the main thread; not Linux
        signal.signal(signal.SIGIO, signal.SIG_IGN)


def _file(disk: Path, path: str, info: os.stat_result, known: Observed | None, now: float, out: Scan) -> None:
    executable = bool(info.st_mode & st.S_IXUSR)
    if known and (known.size, known.mtime_ns, known.inode) == (info.st_size, info.st_mtime_ns, info.st_ino):
        digest = known.content_hash
    elif settle_left(disk, info.st_mtime_ns, now) > 0:
        out.unstable.add(path)
        out.skipped[path] = "still being written"
        return
    else:
        found: list[tuple[int, int, bytes]] | None = [] if info.st_size > KEEP_BLOCKS_OVER else None
        if known is not None and out.changing is not None and max(known.size, info.st_size) >= HINT_OVER:
            out.changing(path, known)
        keep = info.st_size <= KEEP_BYTES_UPTO and out.data_bytes + info.st_size <= KEEP_BYTES_BUDGET
        try:
            if keep:
                data = fs.disk().read_bytes(disk)
                kept = [(b.hash, bytes(b.data)) for b in chunk_bytes(data)]
                digest = content_hash(h for h, _ in kept)
            else:
                digest = hash_file(disk, found)
            after = fs.disk().stat(disk)
        except OSError as e:
            out.skipped[path] = f"vanished or unreadable: {e.strerror}"
            return
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (
            info.st_size,
            info.st_mtime_ns,
            info.st_ino,
        ) or (keep and len(data) != after.st_size):
            out.unstable.add(path)
            out.skipped[path] = "changed while it was read"
            return
        if keep:
            out.data[path] = ((info.st_size, info.st_mtime_ns, info.st_ino), kept)
            out.data_bytes += info.st_size
        if found is not None:
            out.blocks[path] = KnownBlocks(
                (info.st_size, info.st_mtime_ns, info.st_ino),
                [offset for offset, _, _ in found],
                [size for _, size, _ in found],
                [h for _, _, h in found],
            )
    out.tree[path] = Node("file", digest, executable)
    out.observed[path] = Observed(info.st_size, info.st_mtime_ns, info.st_ino, digest, executable)


def rescan(
    root: Path, previous: Scan, dirty: Iterable[str], known: Mapping[str, Observed],
    conflict_name: Callable[[str], str], now: float | None = None,
    changing: Callable[[str, Observed], None] | None = None,
) -> Scan:  # fmt: skip
    """Bring ``previous`` (a scan of ``root``) up to date given the disk paths a
    watcher reported as changed since; the result is what ``scan`` would find.

    Work is per *folder*: the parent of each dirty path is listed again (so the
    NFC and ignore rules see every sibling, as in a full walk); its files go
    through ``_file`` (cheap unless size, mtime or inode changed), a folder new
    there is walked whole, and a folder gone takes its subtree with it. Paths
    skipped last time (still being written, unreadable) are looked at again
    whether or not the watcher mentioned them. A changed ignore file, or a
    path outside ``root``, makes it a full scan.
    """
    now = time.time() if now is None else now
    base = os.path.join(os.fspath(root), "")
    folders: set[str] = set()  # folders where something changed
    maybe: set[str] = set()  # changed paths that may be folders themselves (listed if so)
    for disk in dirty:
        if disk in (os.fspath(root), base):
            folders.add("/")
            continue
        if not disk.startswith(base) or disk == base + IGNORE_FILE:
            return scan(root, known, conflict_name, now, changing)
        path = "/" + unicodedata.normalize("NFC", disk[len(base) :].rstrip("/"))
        folders.add(_parent(path))
        maybe.add(path)
    for path in (*previous.skipped, *previous.unstable):
        folders.add(_parent(path))
        maybe.add(path)
    out = Scan(dict(previous.tree), dict(previous.observed), dict(previous.skipped), set(previous.unstable),
               changing=changing)  # fmt: skip
    children = previous.children if previous.children is not None else _children_index(out)
    previous.children = None  # taken over: changed below to describe the new scan
    out.children = children
    spec = load_ignores(root)
    known = _ByInode(known)
    listed: set[str] = set()
    whole: set[str] = set()  # folders new this round, walked with all they hold
    for path in sorted(folders | maybe, key=lambda f: (f.count("/"), f)):  # parents first
        target = _to_list(root, path, path in folders, spec, out)
        if target is None or target in listed or any(a in whole for a in (target, *_ancestors(target))):
            continue
        listed.add(target)
        _relist(root, target, spec, known, conflict_name, now, out, children, whole)
    return out


def _to_list(root: Path, path: str, is_folder: bool, spec: pathspec.GitIgnoreSpec, out: Scan) -> str | None:
    """The folder to list again for a change at ``path``: ``path`` itself if it
    is a folder the scan knows and still one on disk, else (for a folder) the
    nearest such folder above it; None if it is under an ignored folder, or
    is a changed file (its parent's listing covers it)."""
    while path != "/":
        node = out.tree.get(path)
        if node is not None and node.kind == "dir" and _is_folder(root / path.lstrip("/")):
            return path
        if not is_folder or is_ignored(spec, path, True):
            return None
        path = _parent(path)
    return path


def _is_folder(disk: Path) -> bool:
    try:
        return st.S_ISDIR(fs.disk().lstat(disk).st_mode)
    except OSError:
        return False


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _ancestors(path: str) -> list[str]:
    """Every folder above ``path``, the root ``/`` included."""
    out = ["/"]
    parts = path.strip("/").split("/")[:-1]
    for i in range(len(parts)):
        out.append("/" + "/".join(parts[: i + 1]))
    return out


def _children_index(s: Scan) -> dict[str, set[str]]:
    """Folder -> the paths directly in it that the scan holds (in the tree or skipped)."""
    out: dict[str, set[str]] = {}
    for path in (*s.tree, *s.skipped):
        if path != "/":
            out.setdefault(_parent(path), set()).add(path)
    return out


def _drop(path: str, out: Scan, children: dict[str, set[str]]) -> None:
    """Forget ``path`` and, if it was a folder, everything under it."""
    for child in children.pop(path, set()):
        _drop(child, out, children)
    out.tree.pop(path, None)
    out.observed.pop(path, None)
    out.skipped.pop(path, None)
    out.unstable.discard(path)
    if path != "/":
        children.get(_parent(path), set()).discard(path)


def _relist(
    root: Path, folder: str, spec: pathspec.GitIgnoreSpec, known: Mapping[str, Observed],
    conflict_name: Callable[[str], str], now: float, out: Scan, children: dict[str, set[str]], whole: set[str],
) -> None:  # fmt: skip
    """List one folder again, as ``_walk`` would, without descending into the
    subfolders it already knew (their own events bring them up to date)."""
    old = children.pop(folder, set())
    kept = {p for p in old if p in out.tree and out.tree[p].kind == "dir" and p not in out.skipped}
    for path in old - kept:
        _drop(path, out, children)
    for path in kept:  # the entry itself; its subtree stays unless it is gone
        del out.tree[path]
    out.skipped.pop(folder, None)  # "unreadable folder": this listing says again if still so
    part = Scan(renamed=out.renamed, changing=out.changing)
    _walk(root / folder.lstrip("/"), folder, spec, known, conflict_name, now, part, shallow=kept)
    for path in kept:
        if path not in part.tree:
            _drop(path, out, children)  # gone, or a file or a link now
    out.tree.update(part.tree)
    out.observed.update(part.observed)
    out.blocks.update(part.blocks)  # so the upload need not cut the file a second time
    for path, (stat, blocks) in part.data.items():  # nor read a small one again, within the budget
        if out.data_bytes + stat[0] <= KEEP_BYTES_BUDGET:
            out.data[path] = (stat, blocks)
            out.data_bytes += stat[0]
    out.skipped.update(part.skipped)
    out.unstable |= part.unstable
    for parent, paths in _children_index(part).items():
        children.setdefault(parent, set()).update(paths)
    whole.update(p for p, node in part.tree.items() if node.kind == "dir" and p not in kept)
