"""The sync planner: what to do, decided from three trees and nothing else.

Terms. A *tree* maps absolute paths (``/a/b.txt``; the root ``/`` is never a
key) to :class:`Node` s. *local* is what the scan found on disk, *remote* what
the server's journal says, *synced* the last state both sides agreed on: the
merge base. :func:`plan` returns the :data:`Action` s that bring local and
remote together; the engine executes them in list order, each checking its own
precondition (the file is still the one scanned, the server version is still
the parent), so a stale plan costs a round, never an edit.

Theory of operation.

1. *Moves first.* A server move (remote has a synced node's ``file_id`` at a
   new path) becomes :class:`MoveLocal`; a local rename (a synced node vanished
   locally and a new local node has the same content, or for a folder the same
   whole subtree) becomes :class:`MoveRemote`. Each detected move is applied to
   our copies of the trees (remote moves to local and synced, local moves to
   remote and synced), so everything after it is planned at the new paths and
   no bytes are sent for a rename. Pairs are made deterministically: remote
   moves parents-first by destination, repeated until none is left (so a rename
   inside a moved folder is found too); local moves folders first, then files,
   sources in path order, each taking the first free destination in path order.
2. *3-way merge per path* into a target: ``None`` (gone on both sides),
   ``"dir"``, or a file whose content comes from ``"local"``, ``"remote"`` or
   ``"both"`` (they already agree). A side *changed* a path when its node is not
   :func:`same` as the base. Changes are judged by content, not by version: a
   new server version with the base's content (an mtime-only commit, or any node
   inside a moved folder, which the server re-versions) is not an edit, it is
   only :class:`Record` ed. One side changed: it wins. Both changed: an edit
   wins over a delete; file against file, the remote file keeps the path and the
   local one is kept as a conflicted copy; file against folder, the folder keeps
   the path and an *edited* file is moved aside to a conflicted name (a local
   file by :class:`ConflictCopy`; a remote file by ``MoveRemote(p, conflicted,
   version)`` followed by ``Download(conflicted)``, so the server copy keeps its
   history and reaches this disk in the same round).
3. *Nothing inside survives a folder delete by accident.* Every ancestor of a
   surviving path is forced to ``"dir"``: a folder deleted on one side while the
   other added or edited something inside is re-created on the deleting side.
4. *Actions* follow from target versus each side. An unchanged node of the
   wrong kind (the other side replaced a file by a folder or the reverse) is
   deleted this round and its replacement created next round: deletes run
   last, so creating at that path in the same plan would fail.

Order of the plan: moves (parents first, by destination; they come first
because every later action names paths as they are after the moves), then
conflicted copies and remote move-asides, then ``MkdirLocal``/``MkdirRemote``
parents first, then ``Upload``/``Download``/``Record``, then
``DeleteLocal``/``DeleteRemote`` children first. A remote delete is one action
for the topmost path (the server deletes the subtree); a local delete is one
action per path (the engine removes a folder only once it is empty).

What the engine must do for the plan to mean what it says: ``Record(p)`` with
no remote node at ``p`` forgets ``synced[p]`` (both sides deleted it);
``MoveRemote`` to a path the local disk does not have (a move-aside) must not
move the synced entries, only a local rename does; ``DeleteLocal`` forgets the
synced entry, not the remote one.
"""

from __future__ import annotations

import datetime
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from protocol.paths import MAX_NAME_BYTES, ancestors, name_of, parent_of

Kind: TypeAlias = Literal["file", "dir"]


@dataclass(frozen=True, slots=True)
class Node:
    kind: Kind
    content_hash: bytes | None = None  # files: identifies content (None for dirs)
    executable: bool = False
    version: int | None = None  # remote & synced trees: server version id; local tree: None
    file_id: int | None = None  # remote & synced trees: stable server file id; local tree: None


Tree: TypeAlias = Mapping[str, Node]


@dataclass(frozen=True, slots=True)
class Upload:
    path: str
    parent: int | None  # server version the upload is based on (None: new on the server)


@dataclass(frozen=True, slots=True)
class MkdirRemote:
    path: str


@dataclass(frozen=True, slots=True)
class DeleteRemote:
    path: str  # a file, or a folder with everything below it
    parent: int


@dataclass(frozen=True, slots=True)
class MoveRemote:
    src: str
    dst: str
    parent: int


@dataclass(frozen=True, slots=True)
class Download:
    path: str


@dataclass(frozen=True, slots=True)
class MkdirLocal:
    path: str


@dataclass(frozen=True, slots=True)
class DeleteLocal:
    path: str


@dataclass(frozen=True, slots=True)
class MoveLocal:
    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class ConflictCopy:
    path: str
    new_path: str


@dataclass(frozen=True, slots=True)
class Record:
    path: str


Action: TypeAlias = (
    Upload
    | MkdirRemote
    | DeleteRemote
    | MoveRemote
    | Download
    | MkdirLocal
    | DeleteLocal
    | MoveLocal
    | ConflictCopy
    | Record
)

_Target: TypeAlias = Literal["dir", "local", "remote", "both"]
_CREATES_LOCAL = (MkdirLocal, Download)
_CREATES_REMOTE = (MkdirRemote, Upload)


def same(a: Node | None, b: Node | None) -> bool:
    """Same kind and, for files, same content and executable bit (versions aside)."""
    if a is None or b is None:
        return a is b
    if a.kind != b.kind:
        return False
    return a.kind == "dir" or (a.content_hash, a.executable) == (b.content_hash, b.executable)


# --- conflicted names ---------------------------------------------------------------


def conflict_name(path: str, device: str, when: datetime.datetime) -> str:
    """``/d/report.txt`` → ``/d/report (conflicted copy from laptop 2026-11-24 101502).txt``."""
    device = "".join("-" if c in "/\\" or not c.isprintable() else c for c in device)
    device = unicodedata.normalize("NFC", device)[:40] or "unknown device"
    return with_suffix(path, f" (conflicted copy from {device} {when:%Y-%m-%d %H%M%S})")


def with_suffix(path: str, suffix: str) -> str:
    """Insert ``suffix`` before the name's extension, shortening the stem to keep
    the name within :data:`MAX_NAME_BYTES`. A dotfile (``.bashrc``) or a name
    without a dot has no extension."""
    name = name_of(path)
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, dot + ext) if stem and ext else (name, "")
    room = MAX_NAME_BYTES - len((suffix + ext).encode())
    if room < 1:  # an absurdly long extension: treat it as part of the stem
        stem, ext, room = name, "", MAX_NAME_BYTES - len(suffix.encode())
    stem = stem.encode()[: max(room, 0)].decode(errors="ignore")
    folder = parent_of(path)
    return ("" if folder == "/" else folder) + "/" + unicodedata.normalize("NFC", stem + suffix + ext)


# --- working trees ------------------------------------------------------------------


class _Tree:
    """A mutable copy of a tree with a child index, so subtrees move cheaply.

    Moves can leave a path's ancestors absent from ``nodes`` (the server makes
    them on the way); ``kids`` still lists such implied folders, so
    :meth:`occupied` sees them."""

    def __init__(self, nodes: Tree) -> None:
        self.nodes: dict[str, Node] = dict(nodes)
        self._kids: dict[str, set[str]] | None = None  # built when first needed: most plans move nothing

    @property
    def kids(self) -> dict[str, set[str]]:
        if self._kids is None:
            self._kids = {}
            for path in self.nodes:
                self._link(path)
        return self._kids

    def _link(self, path: str) -> None:
        child = path
        while child != "/":
            siblings = self.kids.setdefault(parent_of(child), set())
            if child in siblings:
                break
            siblings.add(child)
            child = parent_of(child)

    def occupied(self, path: str) -> bool:
        """Is there a node at ``path`` or below it?"""
        return path in self.nodes or bool(self.kids.get(path))

    def within(self, path: str) -> Iterator[tuple[str, Node]]:
        """``path`` and every node below it (in no particular order)."""
        stack = [path]
        while stack:
            here = stack.pop()
            if here in self.nodes:
                yield here, self.nodes[here]
            stack.extend(self.kids.get(here, ()))

    def move(self, src: str, dst: str) -> None:
        moved, stack = [], [src]
        while stack:  # take the subtree out, implied folders included
            here = stack.pop()
            if here in self.nodes:
                moved.append((here, self.nodes.pop(here)))
            stack.extend(self.kids.pop(here, ()))
        child = src
        while child != "/":  # unlink src, and implied folders left empty by it
            parent = parent_of(child)
            siblings = self.kids.get(parent, set())
            siblings.discard(child)
            if siblings or parent in self.nodes or parent == "/":
                break
            self.kids.pop(parent, None)
            child = parent
        for path, node in moved:
            self.nodes[dst + path[len(src) :]] = node
            self._link(dst + path[len(src) :])


# --- moves --------------------------------------------------------------------------


def _remote_moves(local: _Tree, remote: _Tree, synced: _Tree) -> list[Action]:
    """Server-side moves (a synced file_id now at another path) → MoveLocal."""
    by_id = {n.file_id: p for p, n in remote.nodes.items() if n.file_id is not None}
    actions: list[Action] = []
    while True:
        candidates = sorted(
            (by_id[n.file_id], p)
            for p, n in synced.nodes.items()
            if n.file_id in by_id and p not in remote.nodes
        )
        progress = False
        for dst, src in candidates:
            if _remote_move_ok(local, remote, synced, src, dst):
                local.move(src, dst)
                synced.move(src, dst)
                actions.append(MoveLocal(src, dst))
                progress = True
        if not progress:
            return actions


def _remote_move_ok(local: _Tree, remote: _Tree, synced: _Tree, src: str, dst: str) -> bool:
    s, here, there = synced.nodes.get(src), local.nodes.get(src), remote.nodes.get(dst)
    if s is None or here is None or there is None or not s.kind == here.kind == there.kind:
        return False  # moved along with a folder already, or replaced by another kind
    if local.occupied(dst) or synced.occupied(dst):
        return False
    return _folders_on_the_way(local, dst)


def _folders_on_the_way(tree: _Tree, path: str) -> bool:
    """No file stands where ``path`` needs a folder."""
    return all(tree.nodes.get(a, Node("dir")).kind == "dir" for a in ancestors(path))


def _local_moves(local: _Tree, remote: _Tree, synced: _Tree) -> list[Action]:
    """Local renames (a synced node vanished, a new one has its content) → MoveRemote."""
    sources = [
        p
        for p, s in sorted(synced.nodes.items())
        if p not in local.nodes and _unchanged_remotely(s, remote.nodes.get(p)) and not local.occupied(p)
    ]
    if not sources:
        return []
    fresh = [p for p in sorted(local.nodes) if not synced.occupied(p) and not remote.occupied(p)]
    kinds = {synced.nodes[p].kind for p in sources} & {local.nodes[p].kind for p in fresh}
    if not kinds:
        return []
    targets: dict[object, list[str]] = {}
    for p in fresh:
        if local.nodes[p].kind in kinds:
            targets.setdefault(_signature(local, p), []).append(p)
    actions: list[Action] = []
    for kind in sorted(kinds):  # "dir" first: a whole folder in one move, not file by file
        for src in sources:
            if src in synced.nodes and synced.nodes[src].kind == kind:
                dst = _free_target(targets.get(_signature(synced, src), []), remote, synced)
                if dst is not None:
                    parent = remote.nodes[src].version
                    assert parent is not None, f"remote node {src} without a version"
                    remote.move(src, dst)
                    synced.move(src, dst)
                    actions.append(MoveRemote(src, dst, parent))
    return actions


def _unchanged_remotely(s: Node, r: Node | None) -> bool:
    return r is not None and r.kind == s.kind and (r.kind == "dir" or same(r, s))


def _free_target(candidates: list[str], remote: _Tree, synced: _Tree) -> str | None:
    """The first candidate no earlier move has put something in or under (remote and
    synced move in step, so looking at synced is enough) and no remote file blocks."""
    for i, dst in enumerate(candidates):
        if not synced.occupied(dst) and _folders_on_the_way(remote, dst):
            del candidates[i]
            return dst
    return None


def _signature(tree: _Tree, root: str) -> object:
    """What a move must preserve: the content, or for a folder the whole subtree."""
    node = tree.nodes[root]
    if node.kind == "file":
        return ("file", node.content_hash, node.executable)
    cut = len(root)
    below = ((p[cut:], n.kind, n.content_hash, n.executable) for p, n in tree.within(root) if p != root)
    return ("dir", tuple(sorted(below)))


# --- targets ------------------------------------------------------------------------


def _decide(here: Node | None, there: Node | None, base: Node | None) -> _Target | None:
    """The 3-way merge of one path: what it should be on both sides afterwards."""
    if same(here, there):
        return None if here is None else _side(here, "both")
    local_changed, remote_changed = not same(here, base), not same(there, base)
    if local_changed and remote_changed:
        if here is None or there is None:  # an edit wins over a delete
            return _side(here or there, "local" if there is None else "remote")
        return "remote" if here.kind == there.kind == "file" else "dir"
    return _side(here, "local") if local_changed else _side(there, "remote")


def _settled(here: Node, there: Node | None, base: Node | None) -> bool:
    """Nothing to do at this path: both sides hold the base. (A server version is
    immutable, so the same version id is the same node; compared by hand, as
    this runs for every path of every plan.)"""
    return (
        there is not None
        and base is not None
        and base.version is not None
        and base.version == there.version
        and here.kind == there.kind
        and here.content_hash == there.content_hash
        and here.executable == there.executable
    )


def _side(node: Node | None, side: _Target) -> _Target | None:
    if node is None:
        return None
    return "dir" if node.kind == "dir" else side


def _targets(local: _Tree, remote: _Tree, synced: _Tree) -> tuple[dict[str, _Target], set[str]]:
    """Every path's target, and the paths that may need an action (the rest are settled)."""
    targets: dict[str, _Target] = {}
    busy: set[str] = set()
    for p in local.nodes.keys() | remote.nodes.keys() | synced.nodes.keys():
        here, there, base = local.nodes.get(p), remote.nodes.get(p), synced.nodes.get(p)
        if here is not None and _settled(here, there, base):
            targets[p] = "dir" if here.kind == "dir" else "both"  # settled: nothing to do here
            continue
        busy.add(p)
        t = _decide(here, there, base)
        if t is not None:
            targets[p] = t
    for p in list(targets):  # whatever survives keeps its folders
        folder = parent_of(p)
        while folder != "/" and targets.get(folder) != "dir":  # a "dir" has its own turn
            targets[folder] = "dir"
            busy.add(folder)
            folder = parent_of(folder)
    return targets, busy


# --- actions ------------------------------------------------------------------------


@dataclass
class _Plan:
    local: _Tree
    remote: _Tree
    synced: _Tree
    conflict_name: Callable[[str], str]
    moves: list[Action] = field(default_factory=list)
    aside: list[Action] = field(default_factory=list)
    mkdirs: list[Action] = field(default_factory=list)
    transfers: list[Action] = field(default_factory=list)
    deletes: list[Action] = field(default_factory=list)
    blocked_local: set[str] = field(default_factory=set)
    blocked_remote: set[str] = field(default_factory=set)
    named: set[str] = field(default_factory=set)
    everything: tuple[Tree, ...] = ()  # the whole trees, when only some paths are planned

    def fresh_name(self, path: str) -> str:
        name, n = self.conflict_name(path), 1
        while self._taken(name):
            n += 1
            name = with_suffix(self.conflict_name(path), f" {n}")
        self.named.add(name)
        return name

    def _taken(self, name: str) -> bool:
        return (
            name in self.named
            or any(t.occupied(name) for t in (self.local, self.remote, self.synced))
            or any(name in t for t in self.everything)
        )

    def path(self, p: str, t: _Target | None) -> None:
        here, there, base = self.local.nodes.get(p), self.remote.nodes.get(p), self.synced.nodes.get(p)
        self.local_side(p, t, here, there, base)
        self.remote_side(p, t, here, there, base)
        agreed = here is not None and there is not None and same(here, there)
        if (agreed and base != there) or (here is None and there is None and base is not None):
            self.transfers.append(Record(p))

    def local_side(
        self, p: str, t: _Target | None, here: Node | None, there: Node | None, base: Node | None
    ) -> None:
        if t is None:
            if here is not None:
                self.deletes.append(DeleteLocal(p))
        elif t == "dir" and (here is None or here.kind == "file"):
            if here is not None and same(here, base):
                self._replace_local(p)
            else:
                if here is not None:
                    self.aside.append(ConflictCopy(p, self.fresh_name(p)))
                self.mkdirs.append(MkdirLocal(p))
        elif t == "remote":
            assert here is None or not same(here, there), f"{p}: decided 'remote' for agreeing sides"
            if here is not None and here.kind == "dir":
                self._replace_local(p)
            else:
                if here is not None and not same(here, base):
                    self.aside.append(ConflictCopy(p, self.fresh_name(p)))
                self.transfers.append(Download(p))

    def remote_side(
        self, p: str, t: _Target | None, here: Node | None, there: Node | None, base: Node | None
    ) -> None:
        if t is None:
            if there is not None:
                self.deletes.append(DeleteRemote(p, _version(p, there)))
        elif t == "dir" and (there is None or there.kind == "file"):
            if there is not None and same(there, base):
                self._replace_remote(p, there)
            else:
                if there is not None:
                    aside = self.fresh_name(p)
                    self.aside.append(MoveRemote(p, aside, _version(p, there)))
                    self.transfers.append(Download(aside))
                self.mkdirs.append(MkdirRemote(p))
        elif t == "local":
            if there is not None and there.kind == "dir":
                self._replace_remote(p, there)
            else:
                self.transfers.append(Upload(p, None if there is None else _version(p, there)))

    def _replace_local(self, p: str) -> None:
        """An unchanged local node of the wrong kind: delete now, create next round."""
        self.deletes.append(DeleteLocal(p))
        self.blocked_local.add(p)

    def _replace_remote(self, p: str, there: Node) -> None:
        self.deletes.append(DeleteRemote(p, _version(p, there)))
        self.blocked_remote.add(p)

    def ordered(self) -> list[Action]:
        def key(a: Action) -> tuple[str, str]:
            return (a.src if isinstance(a, MoveRemote | MoveLocal) else a.path, type(a).__name__)

        creations = [a for a in self.mkdirs + self.transfers if not self._blocked(a)]
        doomed = {a.path for a in self.deletes if isinstance(a, DeleteRemote)}
        # the server deletes a folder's subtree with it: one action for the topmost path
        deletes = [
            a
            for a in self.deletes
            if not (isinstance(a, DeleteRemote) and any(x in doomed for x in ancestors(a.path)))
        ]
        return [
            *self.moves,
            *sorted(self.aside, key=key),
            *sorted((a for a in creations if isinstance(a, MkdirLocal | MkdirRemote)), key=key),
            *sorted((a for a in creations if not isinstance(a, MkdirLocal | MkdirRemote)), key=key),
            *sorted(deletes, key=key, reverse=True),
        ]

    def _blocked(self, a: Action) -> bool:
        blocked = self.blocked_local if isinstance(a, _CREATES_LOCAL) else self.blocked_remote
        if not blocked or not isinstance(a, _CREATES_LOCAL + _CREATES_REMOTE):
            return False
        return a.path in blocked or any(x in blocked for x in ancestors(a.path))


def _version(path: str, node: Node) -> int:
    assert node.version is not None, f"remote node {path} without a version"
    return node.version


def plan(local: Tree, remote: Tree, synced: Tree, conflict_name: Callable[[str], str]) -> list[Action]:
    """Actions that bring ``local`` and ``remote`` together, given their merge base
    ``synced``. Pure: the same three trees always give the same list.
    ``conflict_name(path)`` names a conflicted copy of ``path`` (a sibling path)."""
    return plan_within(local, remote, synced, conflict_name, focus(local, remote, synced))


def focus(local: Tree, remote: Tree, synced: Tree, most: float = 0.1) -> set[str] | None:
    """The only paths a plan can concern, when few paths differ: those not
    settled (the same on both sides and in the base), with their folders and
    everything below them. ``None`` when more than ``most`` of the paths differ
    (or a folder's contents would have to be found): then planning over the
    whole trees is as quick. A live sync folder of 10,000 files usually has one
    or two unsettled paths, and planning over those alone is what keeps a save
    quick to arrive; tests check that both ways give the same plan."""
    busy = (remote.keys() - local.keys()) | (synced.keys() - local.keys())
    busy.update(p for p, here in local.items() if not _settled(here, remote.get(p), synced.get(p)))
    if len(busy) > most * max(len(local), len(remote), len(synced)):
        return None
    folders = tuple(
        p + "/" for p in busy if any(t.get(p, _FILE).kind == "dir" for t in (local, remote, synced))
    )
    out = set(busy)
    if folders:
        for tree in (local, remote, synced):
            out.update(p for p in tree if p.startswith(folders))
    for p in busy:
        out.update(ancestors(p))
    return out


_FILE = Node("file")


def plan_within(
    local: Tree, remote: Tree, synced: Tree, conflict_name: Callable[[str], str], paths: set[str] | None
) -> list[Action]:
    """:func:`plan` over ``paths`` only (all paths: ``None``)."""

    def part(tree: Tree) -> _Tree:
        return _Tree(tree if paths is None else {p: tree[p] for p in paths if p in tree})

    out = _Plan(part(local), part(remote), part(synced), conflict_name, everything=(local, remote, synced))
    out.moves = _remote_moves(out.local, out.remote, out.synced)
    out.moves += _local_moves(out.local, out.remote, out.synced)
    targets, busy = _targets(out.local, out.remote, out.synced)
    for p in sorted(busy):
        out.path(p, targets.get(p))
    return out.ordered()
