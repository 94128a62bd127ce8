"""The pure rules that fold several namespaces into one synced tree."""

from __future__ import annotations

from client import mounts
from client import planner as p
from protocol import messages as m

ROOT = m.NamespaceInfo(1, "/", "owner", 10)
TEAM = m.NamespaceInfo(7, "/Team", "editor", 3)
READ = m.NamespaceInfo(9, "/Work/Read", "viewer", 2)
SPACES = [ROOT, TEAM, READ]


def entry(path: str, deleted: bool = False) -> m.Entry:
    return m.Entry(path, "file", 5, 6, deleted=deleted)


def test_root_entries_under_a_mount_are_dropped() -> None:
    got = mounts.outward([entry("/a"), entry("/Team/old", deleted=True), entry("/Teammate"), entry("/Team")],
                         ROOT, SPACES)  # fmt: skip
    assert [e.path for e in got] == ["/a", "/Teammate"]


def test_shared_entries_move_under_their_mount() -> None:
    got = mounts.outward([entry("/x.txt"), entry("/d/y.txt")], TEAM, SPACES)
    assert [e.path for e in got] == ["/Team/x.txt", "/Team/d/y.txt"]
    assert mounts.mount_point(TEAM) == m.Entry("/Team", "dir", -7, -7)
    assert mounts.cursor_key(ROOT) == "cursor" and mounts.cursor_key(TEAM) == "cursor:7"


def test_mount_of_takes_the_longest_mount() -> None:
    assert mounts.mount_of("/Work/Read/a", SPACES) == READ
    assert mounts.mount_of("/Work/other", SPACES) == ROOT
    assert mounts.mount_of("/Team", SPACES) == TEAM


def test_viewer_changes_and_mount_point_removal_are_held_back() -> None:
    assert mounts.held_back(p.Upload("/Work/Read/a", None), SPACES) is not None
    assert mounts.held_back(p.DeleteRemote("/Work/Read/a", 3), SPACES) is not None
    assert mounts.held_back(p.MoveRemote("/mine", "/Work/Read/mine", 3), SPACES) is not None
    assert mounts.held_back(p.Upload("/Team/a", None), SPACES) is None
    assert mounts.held_back(p.DeleteRemote("/Team", 3), SPACES) is not None
    assert mounts.held_back(p.MoveRemote("/Team", "/Team2", 3), SPACES) is not None
    assert mounts.held_back(p.DeleteRemote("/Team/a", 3), SPACES) is None
    assert mounts.held_back(p.Download("/Work/Read/a"), SPACES) is None


def test_batches_are_grouped_per_namespace() -> None:
    paths = ["/a", "/Team/b", "/c", "/Team/d/e"]
    assert mounts.group_by_namespace(paths, SPACES) == {1: [0, 2], 7: [1, 3]}
