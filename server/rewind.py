"""Planning a rewind: which versions to write so that a folder is again as it
was at a journal cut. Pure: no database, no I/O (``server.versions`` runs it).

Theory of operation. The folder's *target* state (every node under it at the
cut) and its *current* state (every node under it now) are matched by file
id, so a file renamed since the cut is moved back rather than deleted and
re-created, and keeps its history. The plan is an ordered list of writes,
each a new version copied from an existing one (no bytes move):

1. files that are not in the target are deleted first (they hold nothing);
2. target nodes are written in path order, so a folder comes before what is
   in it. A node whose file is already at its path with the same content is
   left alone. If another node stands where a target node belongs, that node
   (and whatever is below it) is deleted first; if it is a target node
   itself it is re-created at its own target path later, same file id;
3. folders that are not in the target are deleted, deepest first.

A target file that lives *outside* the folder now (moved out after the cut)
comes back as a copy with a new file id: a rewind changes nothing outside
its folder (and a later rewind to the same time keeps that copy). For the same reason files moved into the folder after the cut
are deleted from it (recoverable like any deletion).

Writes happen in one transaction; the journal shows them in plan order, so
a syncing device applying them one by one never sees two nodes at one path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.paths import is_within


@dataclass(frozen=True, slots=True)
class Node:
    """A file or folder in one state, as the planner compares them."""

    path: str
    file_id: int
    version: int
    kind: str
    content: tuple[object, ...] = ()  # (content hash, size, mtime, executable): equal = same state


@dataclass(frozen=True, slots=True)
class Op:
    """Write a version of ``file_id`` (``None``: a new file) at ``path`` that
    copies version ``source``; ``deleted`` makes it a tombstone."""

    source: int
    file_id: int | None
    path: str
    kind: str
    deleted: bool = False


def plan(target: Iterable[Node], current: Iterable[Node], elsewhere: set[int]) -> list[Op]:
    """Writes that turn ``current`` into ``target``. ``elsewhere``: file ids of
    target nodes that now live outside the folder (they come back as copies)."""
    at = {n.path: n for n in current}  # what stands where, as the plan goes
    target = sorted(_adopt_copies(target, at, elsewhere), key=lambda n: n.path)
    where = {n.file_id: n.path for n in at.values()}
    keep = {n.file_id for n in target if n.file_id not in elsewhere}
    ops: list[Op] = []

    def tombstone(n: Node) -> None:
        ops.append(Op(n.version, n.file_id, n.path, n.kind, deleted=True))
        del at[n.path]
        del where[n.file_id]

    for n in list(at.values()):
        if n.kind == "file" and n.file_id not in keep:
            tombstone(n)
    for copies, t in enumerate(target, start=1):
        new = t.file_id in elsewhere
        there = at.get(t.path)
        if there is not None and (new or there.file_id != t.file_id):
            for n in sorted(_subtree(at, t.path), key=lambda n: n.path, reverse=True):
                tombstone(n)
            there = None
        if there is not None and (there.kind, there.content) == (t.kind, t.content):
            continue
        ops.append(Op(t.version, None if new else t.file_id, t.path, t.kind))
        fid = -copies if new else t.file_id  # a copy's id is only known once written
        keep.add(fid)
        old = where.pop(fid, None)
        if old is not None:
            del at[old]
        at[t.path] = Node(t.path, fid, t.version, t.kind, t.content)
        where[fid] = t.path
    for path in sorted(at, reverse=True):
        if at[path].file_id not in keep:
            tombstone(at[path])
    return ops


def _adopt_copies(target: Iterable[Node], at: dict[str, Node], elsewhere: set[int]) -> list[Node]:
    """A target node that lives elsewhere, where an identical node that is not
    a target already stands (the copy an earlier rewind made): keep that one,
    so rewinding twice to the same time changes nothing the second time."""
    target = list(target)
    ids = {n.file_id for n in target}
    out = []
    for t in target:
        there = at.get(t.path)
        if (
            t.file_id in elsewhere
            and there is not None
            and there.file_id not in ids
            and (there.kind, there.content) == (t.kind, t.content)
        ):
            t = Node(t.path, there.file_id, t.version, t.kind, t.content)
        out.append(t)
    return out


def _subtree(at: dict[str, Node], path: str) -> list[Node]:
    return [n for p, n in at.items() if is_within(p, path)]
