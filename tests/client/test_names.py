"""Which server names a case-insensitive disk cannot hold apart (client.names)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from client.names import clashes, fold
from client.planner import Node
from protocol.paths import is_within

SEGMENTS = ["a", "A", "b", "B", "\u00e9", "\u00c9", "x.txt", "X.TXT"]


def _tree(paths: list[str]) -> dict[str, Node]:
    tree: dict[str, Node] = {}
    for i, path in enumerate(paths):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            tree.setdefault("/" + "/".join(parts[:depth]), Node("dir", file_id=1000 + len(tree)))
        tree.setdefault(path, Node("file", b"h", file_id=i))
    return tree


@given(st.lists(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(lambda s: "/" + "/".join(s))))
def test_renaming_every_clash_leaves_names_a_folding_disk_can_hold(paths: list[str]) -> None:
    tree = _tree(paths)
    found = clashes(tree)
    renamed = dict(found)
    assert not set(renamed) & set(renamed.values())  # a kept path is never renamed too
    moved = {path: path for path in tree}  # original path -> where the renames (in order) put it
    for path, _ in found:
        was = moved[path]
        for orig, now in moved.items():
            if is_within(orig, path):
                moved[orig] = was + " (conflicted)" + now[len(was) :]
    assert len({fold(p) for p in moved.values()}) == len(moved)


def test_the_older_file_keeps_its_name_and_parents_go_first() -> None:
    tree = {
        "/Docs": Node("dir", file_id=1),
        "/docs": Node("dir", file_id=5),
        "/Docs/a": Node("file", b"1", file_id=7),
        "/docs/A": Node("file", b"2", file_id=3),  # older, but inside the folder that moves
        "/README": Node("file", b"3", file_id=9),
        "/Readme": Node("file", b"4", file_id=8),
    }
    assert clashes(tree) == [("/docs", "/Docs"), ("/README", "/Readme")]
