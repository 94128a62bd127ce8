"""The pure sync planner, hammered with random trees.

A small model of the engine (:class:`World`) executes plans against a local,
a remote and a synced tree, asserting every precondition the real engine and
server check (an upload's parent is the server's current version, a delete
never removes an edit, a download never overwrites one, parents exist...).
Random scenarios start from a synced base and edit each side independently,
with few names and few contents so that conflicts, kind changes and ambiguous
moves are common.
"""

from __future__ import annotations

import datetime
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from client.planner import (
    Action,
    ConflictCopy,
    DeleteLocal,
    DeleteRemote,
    Download,
    MkdirLocal,
    MkdirRemote,
    MoveLocal,
    MoveRemote,
    Node,
    Record,
    Upload,
    conflict_name,
    focus,
    plan,
    plan_within,
    same,
)
from protocol.paths import MAX_NAME_BYTES, ancestors, is_within, name_of, parent_of, validate_path

WHEN = datetime.datetime(2026, 11, 24, 10, 15, 2)
MARK = " (conflicted copy from laptop 2026-11-24 101502)"
FILE: Literal["file"] = "file"
DIR: Literal["dir"] = "dir"
Trees = tuple[dict[str, Node], dict[str, Node], dict[str, Node]]


def cname(path: str) -> str:
    return conflict_name(path, "laptop", WHEN)


def join(folder: str, name: str) -> str:
    return ("" if folder == "/" else folder) + "/" + name


def below(tree: dict[str, Node], path: str) -> list[str]:
    """``path`` and everything under it, parents first."""
    return sorted(p for p in tree if is_within(p, path))


def well_formed(tree: dict[str, Node]) -> None:
    for p in tree:
        assert p != "/" and validate_path(p) == p
        for a in ancestors(p):
            assert a in tree and tree[a].kind == DIR, f"{p} has no folder {a}"
        assert tree[p].kind == DIR or tree[p].content_hash is not None


# --- the model of the engine ----------------------------------------------------------


@dataclass
class World:
    local: dict[str, Node]
    remote: dict[str, Node]
    synced: dict[str, Node]
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1_000_000))

    def fresh(self) -> int:
        return next(self.ids)

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            self.apply(action)
            well_formed(self.local)
            well_formed(self.remote)

    def apply(self, a: Action) -> None:  # one case per action, as in the engine
        L, R, S = self.local, self.remote, self.synced
        match a:
            case Upload(path=p, parent=parent):
                here, there = L.get(p), R.get(p)
                assert here is not None and here.kind == FILE, f"upload of {p}: no local file"
                assert (there.version if there else None) == parent, f"upload of {p}: stale parent"
                if there is not None:
                    assert there.kind == FILE
                    assert same(there, S.get(p)) or same(there, here), f"upload overwrites remote edit {p}"
                self.need_folder(R, p)
                R[p] = Node(FILE, here.content_hash, here.executable, self.fresh(),
                            there.file_id if there else self.fresh())  # fmt: skip
                S[p] = R[p]
            case MkdirRemote(path=p):
                self.need_folder(R, p)
                assert p in L and L[p].kind == DIR, f"mkdir remote {p}: no local folder"
                if p in R:
                    assert R[p].kind == DIR, f"mkdir remote {p}: a file is there"
                else:
                    R[p] = Node(DIR, version=self.fresh(), file_id=self.fresh())
                S[p] = R[p]
            case DeleteRemote(path=p, parent=parent):
                assert p in R and R[p].version == parent, f"delete remote {p}: stale parent"
                for q in below(R, p):
                    assert same(R[q], S.get(q)), f"delete remote {p} loses the remote edit {q}"
                    del R[q]
                for q in below(S, p):
                    del S[q]
            case MoveRemote(src=src, dst=dst, parent=parent):
                assert src in R and R[src].version == parent, f"move remote {src}: stale parent"
                assert not below(R, dst) and not is_within(dst, src), f"move remote onto {dst}"
                self.make_folders(R, dst, lambda: Node(DIR, version=self.fresh(), file_id=self.fresh()))
                for q in below(R, src):
                    R[dst + q[len(src) :]] = replace(R.pop(q), version=self.fresh())
                if dst in L:  # a local rename: the base moves with it
                    assert L[dst].kind == R[dst].kind
                    assert src in S and not below(S, dst), f"move remote {src}: base not movable to {dst}"
                    for q in below(S, src):
                        S[dst + q[len(src) :]] = S.pop(q)
                    S[dst] = R[dst]
                else:  # a remote file moved aside, to a conflicted name
                    assert R[dst].kind == FILE and not same(R[dst], S.get(src)), f"needless move-aside {src}"
            case Download(path=p):
                there, here = R.get(p), L.get(p)
                assert there is not None and there.kind == FILE, f"download of {p}: no remote file"
                self.need_folder(L, p)
                if here is not None:
                    assert here.kind == FILE, f"download onto folder {p}"
                    assert same(here, S.get(p)) or same(here, there), f"download overwrites local edit {p}"
                L[p] = Node(FILE, there.content_hash, there.executable)
                S[p] = there
            case MkdirLocal(path=p):
                self.need_folder(L, p)
                assert p in R and R[p].kind == DIR, f"mkdir local {p}: no remote folder"
                assert L.get(p, Node(DIR)).kind == DIR, f"mkdir local {p}: a file is there"
                L[p] = Node(DIR)
                S[p] = R[p]
            case DeleteLocal(path=p):
                assert p in L, f"delete local {p}: nothing there"
                assert same(L[p], S.get(p)), f"delete local {p} loses a local edit"
                assert below(L, p) == [p], f"delete local {p}: folder not empty"
                del L[p]
                for q in below(S, p):
                    del S[q]
            case MoveLocal(src=src, dst=dst):
                assert src in L and src in S, f"move local {src}: not here"
                assert not below(S, dst), f"move local onto {dst}, which the base still has"
                assert not below(L, dst) and dst in R and R[dst].kind == L[src].kind, f"move local to {dst}"
                self.make_folders(L, dst, lambda: Node(DIR))
                for tree in (L, S):
                    for q in below(tree, src):
                        tree[dst + q[len(src) :]] = tree.pop(q)
            case ConflictCopy(path=p, new_path=new):
                assert p in L and L[p].kind == FILE, f"conflicted copy of {p}: no local file"
                assert parent_of(new) == parent_of(p) and new not in L and new not in R and new not in S
                L[new] = L.pop(p)
            case Record(path=p):
                assert same(L.get(p), R.get(p)), f"record {p}: sides disagree"
                if p in R:
                    S[p] = R[p]
                else:
                    assert p in S, f"record {p}: nothing to record"
                    del S[p]

    def need_folder(self, tree: dict[str, Node], path: str) -> None:
        folder = parent_of(path)
        assert folder == "/" or (folder in tree and tree[folder].kind == DIR), f"{path}: no folder"

    def make_folders(self, tree: dict[str, Node], path: str, make: Callable[[], Node]) -> None:
        """Like the server's (and the engine's) mkdir -p before a move."""
        for a in ancestors(path):
            if a in tree:
                assert tree[a].kind == DIR, f"{path}: {a} is a file"
            else:
                tree[a] = make()


def phase(a: Action) -> int:
    aside = isinstance(a, MoveRemote) and " (conflicted copy from " in name_of(a.dst)
    if isinstance(a, MoveLocal | MoveRemote) and not aside:
        return 0
    if isinstance(a, ConflictCopy | MoveRemote):
        return 1
    if isinstance(a, MkdirLocal | MkdirRemote):
        return 2
    return 4 if isinstance(a, DeleteLocal | DeleteRemote) else 3


def paths_of(a: Action) -> list[str]:
    match a:
        case MoveLocal(src=s, dst=d) | MoveRemote(src=s, dst=d):
            return [s, d]
        case ConflictCopy(path=p, new_path=n):
            return [p, n]
        case _:
            return [a.path]


def check_order(actions: list[Action]) -> None:
    """Moves, then conflicted copies, folders made parents first, transfers, deletes children first."""
    phases = [phase(a) for a in actions]
    assert phases == sorted(phases), actions
    assert not any("/" in paths_of(a) for a in actions), f"an action on the root: {actions}"
    assert len(set(actions)) == len(actions), f"duplicate actions: {actions}"
    made = [a.path for a in actions if isinstance(a, MkdirLocal | MkdirRemote)]
    gone = [a.path for a in actions if isinstance(a, DeleteLocal | DeleteRemote)]
    for i, p in enumerate(made):
        assert not any(is_within(p, q) and q != p for q in made[i + 1 :]), f"mkdir {p} before its parent"
    for i, p in enumerate(gone):
        assert not any(is_within(q, p) and q != p for q in gone[i + 1 :]), f"delete {p} before its children"


def sync(world: World, rounds: int = 4) -> list[list[Action]]:
    """Plan and apply until the plan is empty; fail if that takes more than ``rounds``."""
    history: list[list[Action]] = []
    for _ in range(rounds + 1):
        actions = plan(world.local, world.remote, world.synced, cname)
        if not actions:
            return history
        check_order(actions)
        world.run(actions)
        history.append(actions)
    raise AssertionError(f"not converged after {rounds} rounds: {history}")


def assert_in_sync(world: World) -> None:
    assert world.local.keys() == world.remote.keys()
    for p, node in world.local.items():
        assert same(node, world.remote[p]), p
    assert world.synced == world.remote
    well_formed(world.local)
    well_formed(world.remote)


# --- random scenarios --------------------------------------------------------------------

NAMES = ("a", "b", "c.txt")
POOL = (b"h0", b"h1", b"h2")
EDITS = st.tuples(
    st.sampled_from(("edit", "chmod", "delete", "add", "mkdir", "move", "move", "replace")),
    st.integers(0, 99),
    st.integers(0, 99),
    st.sampled_from(NAMES),
    st.integers(0, 5),  # 0-2: a content from the shared pool, else a content never seen before
)


class Side:
    """Edits one tree the way a user (local) or another device via the server (remote) would."""

    def __init__(self, tree: dict[str, Node], remote: bool, ids: Iterator[int], tag: str) -> None:
        self.tree, self.remote, self.ids, self.tag = tree, remote, ids, tag

    def node(
        self,
        kind: Literal["file", "dir"],
        content: bytes | None = None,
        x: bool = False,
        old: Node | None = None,
    ) -> Node:
        if not self.remote:
            return Node(kind, content, x)
        return Node(kind, content, x, next(self.ids), old.file_id if old else next(self.ids))

    def content(self, h: int) -> bytes:
        return POOL[h] if h < len(POOL) else f"{self.tag}{next(self.ids)}".encode()

    def edit(self, op: tuple[str, int, int, str, int]) -> None:
        what, i, j, name, h = op
        t = self.tree
        paths = sorted(t)
        files = [p for p in paths if t[p].kind == FILE]
        dirs = ["/", *(p for p in paths if t[p].kind == DIR)]
        if what in ("edit", "chmod") and files:
            p = files[i % len(files)]
            old = t[p]
            x = old.executable != (what == "chmod")
            t[p] = self.node(FILE, self.content(h) if what == "edit" else old.content_hash, x, old)
        elif what in ("delete", "replace") and paths:
            p = paths[i % len(paths)]
            old = t[p]
            for q in below(t, p):
                del t[q]
            if what == "replace":
                t[p] = self.node(DIR) if old.kind == FILE else self.node(FILE, self.content(h))
        elif what in ("add", "mkdir"):
            p = join(dirs[i % len(dirs)], name)
            if p not in t:
                t[p] = self.node(FILE, self.content(h)) if what == "add" else self.node(DIR)
        elif what == "move" and paths:
            src, folder = paths[i % len(paths)], dirs[j % len(dirs)]
            dst = join(folder, name)
            if dst not in t and not is_within(folder, src):
                for q in below(t, src):
                    n = t.pop(q)
                    t[dst + q[len(src) :]] = replace(n, version=next(self.ids)) if self.remote else n


@st.composite
def bases(draw: st.DrawFn, ids: Iterator[int]) -> dict[str, Node]:
    base: dict[str, Node] = {}

    def grow(folder: str, depth: int) -> None:
        for name in NAMES:
            p = join(folder, name)
            what = draw(st.sampled_from(("-", "-", FILE, DIR) if depth < 2 else ("-", FILE)))
            if what == FILE:
                base[p] = Node(FILE, draw(st.sampled_from(POOL)), draw(st.booleans()), next(ids), next(ids))
            elif what == DIR:
                base[p] = Node(DIR, None, False, next(ids), next(ids))
                grow(p, depth + 1)

    grow("/", 0)
    return base


def strip(tree: dict[str, Node]) -> dict[str, Node]:
    """What the scanner would find: no versions, no file ids."""
    return {p: Node(n.kind, n.content_hash, n.executable) for p, n in tree.items()}


@st.composite
def scenarios(draw: st.DrawFn, local_edits: bool = True, remote_edits: bool = True) -> Trees:
    ids = itertools.count(1)
    synced = draw(bases(ids))
    local, remote = strip(synced), dict(synced)
    for enabled, side in (
        (local_edits, Side(local, False, ids, "L")),
        (remote_edits, Side(remote, True, ids, "R")),
    ):
        for op in draw(st.lists(EDITS, max_size=5)) if enabled else []:
            side.edit(op)
    if synced and draw(st.integers(0, 7)) == 0:  # a lost or fresh base: the client state was reset
        for q in below(synced, sorted(synced)[draw(st.integers(0, 99)) % len(synced)]):
            del synced[q]
    return local, remote, synced


def files(tree: dict[str, Node]) -> set[tuple[bytes | None, bool]]:
    return {(n.content_hash, n.executable) for n in tree.values() if n.kind == FILE}


# PLANNER_EXAMPLES=5000 for a long hunt; 300 keeps the file at a few seconds
SETTINGS = settings(max_examples=int(os.environ.get("PLANNER_EXAMPLES", "300")), deadline=None)


# --- properties ----------------------------------------------------------------------------


@SETTINGS
@given(scenarios())
def test_converges_within_four_rounds_to_agreeing_trees(trees: Trees) -> None:
    local, remote, synced = trees
    world = World(dict(local), dict(remote), dict(synced))
    sync(world)
    assert_in_sync(world)


@SETTINGS
@given(scenarios())
def test_no_edit_is_ever_lost(trees: Trees) -> None:
    local, remote, synced = trees
    # an edit is content the base did not have (a moved file is not one); half of the
    # random edits write content never seen before, so this is exact for them
    edits = {(p, n.content_hash, n.executable) for t in (local, remote) for p, n in t.items()
             if n.kind == FILE and (n.content_hash, n.executable) not in files(synced)}  # fmt: skip
    world = World(dict(local), dict(remote), dict(synced))
    sync(world)
    final = files(world.local)
    for p, h, x in edits:
        assert (h, x) in final, f"the edit of {p} ({h!r}) was lost"


@SETTINGS
@given(scenarios())
def test_a_new_file_on_one_side_lands_on_both_at_its_path(trees: Trees) -> None:
    local, remote, synced = trees
    world = World(dict(local), dict(remote), dict(synced))
    sync(world)
    for here, there in ((local, remote), (remote, local)):
        for p, n in here.items():
            quiet = all(
                there.get(a, Node(FILE)).kind == synced.get(a, Node(FILE)).kind == DIR for a in ancestors(p)
            )
            moved = n.file_id is not None and n.file_id in {s.file_id for s in synced.values()}
            if n.kind == FILE and p not in synced and p not in there and quiet and not moved:
                assert same(world.local.get(p), n) and same(world.remote.get(p), n), p


@SETTINGS
@given(scenarios())
def test_plan_is_a_pure_function(trees: Trees) -> None:
    local, remote, synced = trees
    frozen = [MappingProxyType(dict(t)) for t in trees]
    first = plan(frozen[0], frozen[1], frozen[2], cname)
    shuffled = [dict(reversed(t.items())) for t in trees]
    assert plan(shuffled[0], shuffled[1], shuffled[2], cname) == first
    assert [dict(t) for t in frozen] == [local, remote, synced]


@SETTINGS
@given(scenarios(), st.lists(st.sampled_from(NAMES), max_size=30))
def test_planning_only_the_unsettled_paths_gives_the_same_plan(trees: Trees, extra: list[str]) -> None:
    local, remote, synced = trees
    for i, name in enumerate(extra):  # settled bystanders, as most of a real folder is
        bystander = Node(FILE, POOL[i % len(POOL)], False, 10_000 + i, 20_000 + i)
        path = f"/settled{i % 3}/{name}"
        for tree in (local, remote, synced):
            tree.setdefault(f"/settled{i % 3}", Node(DIR, None, False, 30_000 + i % 3, 40_000 + i % 3))
            tree[path] = bystander if tree is not local else strip({path: bystander})[path]
    paths = focus(local, remote, synced, most=float("inf"))
    assert paths is not None
    assert plan_within(local, remote, synced, cname, paths) == plan_within(local, remote, synced, cname, None)


@SETTINGS
@given(scenarios(remote_edits=False))
def test_local_changes_alone_only_change_the_server(trees: Trees) -> None:
    local, _, synced = trees
    world = World(dict(local), dict(synced), dict(synced))
    rounds = sync(world, rounds=2)  # a kind change (file <-> folder) takes a second round
    for actions in rounds:
        assert not [
            a
            for a in actions
            if isinstance(a, Download | MkdirLocal | DeleteLocal | MoveLocal | ConflictCopy)
        ]
    assert world.local == local
    assert_in_sync(world)


@SETTINGS
@given(scenarios(local_edits=False))
def test_remote_changes_alone_only_change_the_disk(trees: Trees) -> None:
    _, remote, synced = trees
    world = World(strip(synced), dict(remote), dict(synced))
    for actions in sync(world, rounds=2):
        assert not [
            a
            for a in actions
            if isinstance(a, Upload | MkdirRemote | DeleteRemote | MoveRemote | ConflictCopy)
        ]
    assert world.remote == remote
    assert_in_sync(world)


@st.composite
def one_move(draw: st.DrawFn) -> tuple[dict[str, Node], tuple[str, int, int, str, int]]:
    synced = draw(bases(itertools.count(1)))
    assume(synced)
    op = ("move", draw(st.integers(0, 99)), draw(st.integers(0, 99)), draw(st.sampled_from(NAMES)), 0)
    return synced, op


@SETTINGS
@given(one_move())
def test_a_local_rename_sends_no_bytes(case: tuple[dict[str, Node], tuple[str, int, int, str, int]]) -> None:
    synced, op = case
    local = strip(synced)
    Side(local, False, itertools.count(10_000), "L").edit(op)
    assume(local != strip(synced))
    actions = plan(local, synced, synced, cname)
    assert [type(a) for a in actions] == [MoveRemote], actions
    world = World(local, dict(synced), dict(synced))
    sync(world)
    assert_in_sync(world)
    assert world.local == local


@SETTINGS
@given(one_move())
def test_a_remote_move_sends_no_bytes(case: tuple[dict[str, Node], tuple[str, int, int, str, int]]) -> None:
    synced, op = case
    remote = dict(synced)
    Side(remote, True, itertools.count(10_000), "R").edit(op)
    assume(remote.keys() != synced.keys())
    actions = plan(strip(synced), remote, synced, cname)
    assert [type(a) for a in actions if not isinstance(a, Record)] == [MoveLocal], actions
    world = World(strip(synced), dict(remote), dict(synced))
    sync(world, rounds=1)
    assert_in_sync(world)
    assert world.remote == remote


# --- examples ----------------------------------------------------------------------------------


def f(h: bytes, v: int | None = None, fid: int | None = None, x: bool = False) -> Node:
    return Node(FILE, h, x, v, fid)


def d(v: int | None = None, fid: int | None = None) -> Node:
    return Node(DIR, None, False, v, fid)


def test_conflict_name_follows_dropbox() -> None:
    assert cname("/d/report.txt") == f"/d/report{MARK}.txt"
    assert cname("/Makefile") == f"/Makefile{MARK}"
    assert cname("/home/.bashrc") == f"/home/.bashrc{MARK}"
    assert cname("/a/archive.tar.gz") == f"/a/archive.tar{MARK}.gz"
    assert cname("/trailing.") == f"/trailing.{MARK}"
    assert (
        conflict_name("/x.txt", "my/pc\n", WHEN) == "/x (conflicted copy from my-pc- 2026-11-24 101502).txt"
    )


def test_conflict_name_stays_within_255_bytes() -> None:
    for stem in ("n" * 300, "é" * 200, "😀" * 100):
        name = name_of(cname(f"/d/{stem}.txt"))
        assert len(name.encode()) <= MAX_NAME_BYTES
        assert name.endswith(f"{MARK}.txt") and name.startswith(stem[:10])
        assert validate_path("/d/" + name) == "/d/" + name
    long_ext = name_of(cname("/d/a." + "e" * 250))
    assert len(long_ext.encode()) <= MAX_NAME_BYTES and long_ext.endswith(MARK)


def test_edit_against_edit_keeps_both_as_a_conflicted_copy() -> None:
    synced = {"/d": d(1, 1), "/d/report.txt": f(b"base", 2, 2)}
    local = {"/d": d(), "/d/report.txt": f(b"mine")}
    remote = {"/d": d(1, 1), "/d/report.txt": f(b"theirs", 3, 2)}
    copy = f"/d/report{MARK}.txt"
    assert plan(local, remote, synced, cname) == [
        ConflictCopy("/d/report.txt", copy),
        Download("/d/report.txt"),
    ]
    world = World(local, remote, synced)
    rounds = sync(world)
    assert rounds[1] == [Upload(copy, None)]
    assert_in_sync(world)
    assert (
        world.local["/d/report.txt"].content_hash == b"theirs" and world.local[copy].content_hash == b"mine"
    )


def test_an_edit_wins_over_a_delete_on_either_side() -> None:
    synced = {"/a.txt": f(b"base", 1, 1)}
    assert plan({"/a.txt": f(b"mine")}, {}, synced, cname) == [Upload("/a.txt", None)]
    assert plan({}, {"/a.txt": f(b"theirs", 2, 1)}, synced, cname) == [Download("/a.txt")]


def test_one_sided_changes() -> None:
    synced = {"/a.txt": f(b"base", 1, 1)}
    assert plan({"/a.txt": f(b"new")}, synced, synced, cname) == [Upload("/a.txt", 1)]
    assert plan({}, synced, synced, cname) == [DeleteRemote("/a.txt", 1)]
    assert plan(strip(synced), {"/a.txt": f(b"new", 2, 1)}, synced, cname) == [Download("/a.txt")]
    assert plan(strip(synced), {}, synced, cname) == [DeleteLocal("/a.txt")]
    assert plan(strip(synced), synced, synced, cname) == []


def test_identical_edits_on_both_sides_are_only_recorded() -> None:
    synced = {"/a.txt": f(b"base", 1, 1)}
    remote = {"/a.txt": f(b"same", 2, 1), "/new": d(3, 3), "/new/b": f(b"b", 4, 4)}
    local = strip(remote)
    assert plan(local, remote, synced, cname) == [Record("/a.txt"), Record("/new"), Record("/new/b")]
    assert plan({}, {}, synced, cname) == [Record("/a.txt")]  # deleted on both sides: forget the base


def test_a_new_remote_version_with_the_same_content_is_no_edit() -> None:
    synced = {"/a.txt": f(b"base", 1, 1)}
    touched = {"/a.txt": f(b"base", 2, 1)}  # e.g. an mtime-only commit from another device
    assert plan(strip(synced), touched, synced, cname) == [Record("/a.txt")]
    assert plan({"/a.txt": f(b"mine")}, touched, synced, cname) == [Upload("/a.txt", 2)]
    assert plan({}, touched, synced, cname) == [DeleteRemote("/a.txt", 2)]


def test_a_local_rename_is_one_move_and_no_upload() -> None:
    synced = {"/d": d(1, 1), "/d/a.txt": f(b"x", 2, 2), "/d/b.txt": f(b"x", 3, 3)}
    local = {"/d": d(), "/d/b.txt": f(b"x"), "/e": d(), "/e/c.txt": f(b"x")}  # a.txt moved to e/c.txt
    actions = plan(local, synced, synced, cname)
    assert actions == [MoveRemote("/d/a.txt", "/e/c.txt", 2), MkdirRemote("/e")]
    world = World(local, dict(synced), dict(synced))
    sync(world)
    assert world.remote["/e/c.txt"].file_id == 2  # history kept
    assert_in_sync(world)


def test_a_local_folder_move_is_one_move() -> None:
    synced = {
        "/a": d(1, 1),
        "/a/x": f(b"x", 2, 2),
        "/a/s": d(3, 3),
        "/a/s/y": f(b"y", 4, 4),
        "/z": f(b"x", 5, 5),
    }
    local = {"/b": d(), "/b/x": f(b"x"), "/b/s": d(), "/b/s/y": f(b"y"), "/z": f(b"x")}
    assert plan(local, synced, synced, cname) == [MoveRemote("/a", "/b", 1)]
    world = World(local, dict(synced), dict(synced))
    rounds = sync(world)
    assert all(isinstance(a, Record) for a in rounds[1])  # the server re-versioned the moved files
    assert {world.remote[p].file_id for p in ("/b", "/b/x", "/b/s", "/b/s/y")} == {1, 2, 3, 4}
    assert_in_sync(world)


def test_a_local_folder_move_with_an_edit_inside_moves_file_by_file() -> None:
    synced = {"/a": d(1, 1), "/a/x": f(b"x", 2, 2), "/a/y": f(b"y", 3, 3)}
    local = {"/b": d(), "/b/x": f(b"x"), "/b/y": f(b"edited")}
    assert plan(local, synced, synced, cname) == [
        MoveRemote("/a/x", "/b/x", 2),
        MkdirRemote("/b"),
        Upload("/b/y", None),
        DeleteRemote("/a", 1),
    ]


def test_a_remote_folder_move_is_one_local_move() -> None:
    synced = {"/a": d(1, 1), "/a/x": f(b"x", 2, 2), "/a/s": d(3, 3), "/a/s/y": f(b"y", 4, 4)}
    remote = {"/b": d(11, 1), "/b/x": f(b"x", 12, 2), "/b/s": d(13, 3), "/b/s/y": f(b"y2", 14, 4)}
    local = strip(synced) | {"/a/mine": f(b"m")}
    actions = plan(local, remote, synced, cname)
    assert actions == [
        MoveLocal("/a", "/b"),
        Record("/b"),
        Upload("/b/mine", None),
        Record("/b/s"),
        Download("/b/s/y"),  # edited on the server too: fetched after the move
        Record("/b/x"),
    ]
    world = World(local, remote, synced)
    sync(world, rounds=1)
    assert_in_sync(world)


def test_a_remote_rename_inside_a_moved_folder_is_a_second_move() -> None:
    synced = {"/a": d(1, 1), "/a/x": f(b"x", 2, 2)}
    remote = {"/b": d(11, 1), "/b/y": f(b"x", 12, 2)}
    actions = plan(strip(synced), remote, synced, cname)
    assert actions == [MoveLocal("/a", "/b"), MoveLocal("/b/x", "/b/y"), Record("/b"), Record("/b/y")]


def test_no_move_into_a_folder_that_is_a_file_here() -> None:
    synced = {"/x": d(1, 1), "/y": f(b"y", 2, 2)}
    remote = {"/x": d(1, 1), "/x/y": f(b"y", 3, 2)}  # the server moved /y into /x ...
    local = {"/x": f(b"mine"), "/y": f(b"y")}  # ... which is a file here now
    actions = plan(local, remote, synced, cname)
    assert not [a for a in actions if isinstance(a, MoveLocal)]
    world = World(local, remote, synced)
    sync(world)
    assert_in_sync(world)
    assert world.local[f"/x{MARK}"].content_hash == b"mine" and world.local["/x/y"].content_hash == b"y"


def test_no_local_move_into_a_folder_that_is_a_file_on_the_server() -> None:
    synced = {"/a": f(b"a", 1, 1), "/x": d(2, 2)}
    remote = {"/a": f(b"a", 1, 1), "/x": f(b"theirs", 3, 3)}  # the server replaced the folder by a file ...
    local = {"/x": d(), "/x/a": f(b"a")}  # ... into which we moved /a
    actions = plan(local, remote, synced, cname)
    assert not [a for a in actions if isinstance(a, MoveRemote) and a.src == "/a"]
    world = World(local, remote, synced)
    sync(world)
    assert_in_sync(world)
    assert world.local[f"/x{MARK}"].content_hash == b"theirs" and world.local["/x/a"].content_hash == b"a"


def test_a_folder_moved_into_a_folder_the_server_deleted_keeps_it() -> None:
    synced = {"/x": d(1, 1), "/b": d(2, 2), "/b/f": f(b"f", 3, 3)}
    remote = {"/b": d(2, 2), "/b/f": f(b"f", 3, 3)}  # the server deleted /x ...
    local = {"/x": d(), "/x/b": d(), "/x/b/f": f(b"f")}  # ... into which we moved /b
    assert plan(local, remote, synced, cname) == [MoveRemote("/b", "/x/b", 2), MkdirRemote("/x")]
    world = World(local, remote, synced)
    sync(world)
    assert_in_sync(world)
    assert world.remote["/x/b/f"].file_id == 3


def test_a_remote_move_onto_a_path_the_base_still_has() -> None:
    synced = {"/a": f(b"a", 1, 1), "/b": f(b"b", 2, 2)}
    remote = {"/b": f(b"a", 3, 1)}  # the server deleted /b and moved /a there
    local = {"/a": f(b"a")}  # we deleted /b too
    world = World(local, remote, synced)
    sync(world)
    assert_in_sync(world)
    assert world.local == {"/b": f(b"a")}


def test_a_local_rename_is_based_on_the_servers_current_version() -> None:
    synced = {"/a": f(b"a", 1, 1)}
    remote = {"/a": f(b"a", 2, 1)}  # re-versioned on the server, same content
    assert plan({"/b": f(b"a")}, remote, synced, cname) == [MoveRemote("/a", "/b", 2), Record("/b")]


def test_a_remote_move_keeps_a_local_edit_of_the_moved_file() -> None:
    synced = {"/a.txt": f(b"base", 1, 1)}
    remote = {"/b.txt": f(b"base", 2, 1)}
    actions = plan({"/a.txt": f(b"mine")}, remote, synced, cname)
    assert actions == [MoveLocal("/a.txt", "/b.txt"), Upload("/b.txt", 2)]


def test_a_folder_deleted_on_one_side_keeps_what_the_other_side_added() -> None:
    synced = {"/d": d(1, 1), "/d/old": f(b"o", 2, 2), "/d/keep": f(b"k", 3, 3)}
    remote = synced | {"/d/new": f(b"n", 4, 4)}
    assert plan({}, remote, synced, cname) == [
        MkdirLocal("/d"),
        Download("/d/new"),
        DeleteRemote("/d/old", 2),
        DeleteRemote("/d/keep", 3),
    ]
    local = strip(synced) | {"/d/keep": f(b"edited")}
    assert plan(local, {}, synced, cname) == [
        MkdirRemote("/d"),
        Upload("/d/keep", None),
        DeleteLocal("/d/old"),
    ]
    for case in ((World({}, dict(remote), dict(synced))), World(local, {}, dict(synced))):
        sync(case)
        assert_in_sync(case)


def test_a_folder_deleted_with_nothing_new_inside_goes_everywhere() -> None:
    synced = {"/d": d(1, 1), "/d/s": d(2, 2), "/d/s/x": f(b"x", 3, 3), "/d/y": f(b"y", 4, 4)}
    assert plan({}, synced, synced, cname) == [DeleteRemote("/d", 1)]  # the server deletes the subtree
    assert plan(strip(synced), {}, synced, cname) == [
        DeleteLocal("/d/y"),
        DeleteLocal("/d/s/x"),
        DeleteLocal("/d/s"),
        DeleteLocal("/d"),
    ]


def test_empty_folders_sync_both_ways() -> None:
    assert plan({"/e": d()}, {}, {}, cname) == [MkdirRemote("/e")]
    assert plan({}, {"/e": d(1, 1)}, {}, cname) == [MkdirLocal("/e")]
    assert plan({}, {"/e": d(1, 1)}, {"/e": d(1, 1)}, cname) == [DeleteRemote("/e", 1)]
    assert plan({"/e": d()}, {}, {"/e": d(1, 1)}, cname) == [DeleteLocal("/e")]
    assert plan({"/e": d()}, {"/e": d(1, 1)}, {}, cname) == [Record("/e")]


def test_a_local_file_against_a_remote_folder_moves_the_file_aside() -> None:
    remote = {"/x": d(1, 1), "/x/in": f(b"i", 2, 2)}
    copy = f"/x{MARK}"
    assert plan({"/x": f(b"mine")}, remote, {}, cname) == [
        ConflictCopy("/x", copy),
        MkdirLocal("/x"),
        Download("/x/in"),
    ]
    world = World({"/x": f(b"mine")}, remote, {})
    sync(world)
    assert_in_sync(world)
    assert world.remote[copy].content_hash == b"mine"


def test_a_remote_file_against_a_local_folder_moves_the_server_copy_aside() -> None:
    remote = {"/x.txt": f(b"theirs", 1, 1)}
    local = {"/x.txt": d(), "/x.txt/in": f(b"i")}
    copy = f"/x{MARK}.txt"
    assert plan(local, remote, {}, cname) == [
        MoveRemote("/x.txt", copy, 1),
        MkdirRemote("/x.txt"),
        Download(copy),
        Upload("/x.txt/in", None),
    ]
    world = World(local, remote, {})
    sync(world, rounds=1)
    assert_in_sync(world)
    assert world.local[copy].content_hash == b"theirs" and world.remote[copy].file_id == 1


def test_an_unchanged_node_replaced_by_another_kind_goes_first() -> None:
    synced = {"/p": d(1, 1), "/p/x": f(b"x", 2, 2)}
    remote = {"/p": f(b"now a file", 3, 3)}
    world = World(strip(synced), remote, synced)
    rounds = sync(world)
    assert rounds == [[DeleteLocal("/p/x"), DeleteLocal("/p")], [Download("/p")]]
    assert_in_sync(world)
    synced = {"/p": f(b"file", 1, 1)}
    local = {"/p": d(), "/p/x": f(b"x")}
    world = World(local, dict(synced), dict(synced))
    rounds = sync(world)
    assert rounds == [[DeleteRemote("/p", 1)], [MkdirRemote("/p"), Upload("/p/x", None)]]
    assert_in_sync(world)


def test_conflicted_names_never_collide() -> None:
    taken = f"/a{MARK}.txt"
    synced = {"/a.txt": f(b"base", 1, 1)}
    local = {"/a.txt": f(b"mine"), taken: f(b"older copy")}
    remote = {"/a.txt": f(b"theirs", 2, 1), taken: f(b"older copy", 3, 3)}
    actions = plan(local, remote, synced | {taken: remote[taken]}, cname)
    assert actions[0] == ConflictCopy("/a.txt", f"/a{MARK} 2.txt")


def test_mass_changes_scale_and_converge() -> None:
    ids = itertools.count(1)
    synced: dict[str, Node] = {}
    for i in range(40):
        synced[f"/f{i}"] = d(next(ids), next(ids))
        for j in range(50):
            synced[f"/f{i}/file{j}.bin"] = f(f"{i}-{j}".encode(), next(ids), next(ids))
    local = strip(synced)
    remote = dict(synced)
    for j in range(50):  # f0 edited here, f1 deleted here, f2 moved here, f3 deleted there, f4 edited there
        local[f"/f0/file{j}.bin"] = f(f"new {j}".encode())
        del local[f"/f1/file{j}.bin"]
        local[f"/g2/file{j}.bin"] = local.pop(f"/f2/file{j}.bin")
        del remote[f"/f3/file{j}.bin"]
        remote[f"/f4/file{j}.bin"] = f(f"theirs {j}".encode(), next(ids), synced[f"/f4/file{j}.bin"].file_id)
    del local["/f1"], remote["/f3"]
    local["/g2"] = local.pop("/f2")
    start = datetime.datetime.now()
    actions = plan(local, remote, synced, cname)
    assert (datetime.datetime.now() - start).total_seconds() < 2
    kinds = [type(a).__name__ for a in actions]
    assert kinds.count("Upload") == 50 and kinds.count("Download") == 50 and kinds.count("DeleteLocal") == 51
    assert [a for a in actions if isinstance(a, MoveRemote | DeleteRemote)] == [
        MoveRemote("/f2", "/g2", synced["/f2"].version),  # type: ignore[arg-type]
        DeleteRemote("/f1", synced["/f1"].version),  # type: ignore[arg-type]
    ]
    world = World(local, remote, synced)
    sync(world, rounds=2)
    assert_in_sync(world)
