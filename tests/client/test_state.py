"""The client's state keeps the three trees in memory between cycles; every
write must show in the next read, and a caller's edits must not leak back."""

from __future__ import annotations

from pathlib import Path

from client.state import Observed, State
from protocol import messages as m


def entry(path: str, file_id: int, version: int, content: bytes = b"\x01" * 32) -> m.Entry:
    return m.Entry(path=path, kind="file", file_id=file_id, version=version, content_hash=content, blocks=[])


def test_every_write_shows_in_the_next_read(tmp_path: Path) -> None:
    s = State(tmp_path / "state.db")
    assert s.remote_tree() == s.synced_tree() == s.observed() == {}
    s.apply_changes([entry("/a", 1, 10), entry("/b", 2, 11)], 2)
    assert sorted(s.remote_tree()) == ["/a", "/b"]
    s.apply_changes([entry("/c", 1, 12)], 3)  # /a moved to /c
    assert sorted(s.remote_tree()) == ["/b", "/c"]
    obs = Observed(5, 6, 7, b"\x01" * 32, False)
    s.record("/c", entry("/c", 1, 12), obs)
    assert s.synced_tree()["/c"].version == 12 and s.observed() == {"/c": obs}
    s.moved("/c", "/d")
    assert list(s.synced_tree()) == ["/d"] and list(s.observed()) == ["/d"]
    s.forget_synced("/d")
    assert s.synced_tree() == {} and list(s.observed()) == ["/d"]
    s.unobserve("/d")
    assert s.observed() == {}
    s.record_many([("/x", entry("/x", 3, 13), obs), ("/y", entry("/y", 4, 14), None)])
    assert sorted(s.synced_tree()) == ["/x", "/y"] and list(s.observed()) == ["/x"]
    s.forget("/x")
    assert "/x" not in s.remote_tree() and "/x" not in s.synced_tree() and s.observed() == {}
    s.reset_remote()
    assert s.remote_tree() == {}
    s.close()


def test_callers_may_change_what_they_read(tmp_path: Path) -> None:
    s = State(tmp_path / "state.db")
    s.apply_changes([entry("/a", 1, 10)], 1)
    tree = s.remote_tree()
    del tree["/a"]  # the engine drops skipped paths from its copy
    assert list(s.remote_tree()) == ["/a"]
    s.close()


def test_a_failed_transaction_leaves_reads_consistent(tmp_path: Path) -> None:
    s = State(tmp_path / "state.db")
    s.apply_changes([entry("/a", 1, 10)], 1)
    assert list(s.remote_tree()) == ["/a"]
    try:
        with s._tx(("remote",)):
            s.db.execute("DELETE FROM remote")
            raise RuntimeError("killed halfway")
    except RuntimeError:
        pass
    assert list(s.remote_tree()) == ["/a"]  # rolled back, and read again from the database
    s.close()


def test_each_namespace_has_its_cursor_and_resets_alone(tmp_path: Path) -> None:
    s = State(tmp_path / "state.db")
    s.apply_changes([entry("/a", 1, 10)], 5)
    s.apply_changes([m.Entry("/Team", "dir", -7, -7), entry("/Team/b", 2, 11)], 3, "cursor:7")
    assert (s.get("cursor"), s.get("cursor:7")) == ("5", "3")
    s.reset_remote_under("/Team", "cursor:7")
    assert sorted(s.remote_tree()) == ["/Team", "/a"] and (s.get("cursor"), s.get("cursor:7")) == ("5", "0")
    s.put("mounts", '{"7": "/Team"}')
    s.reset_remote()
    assert s.remote_tree() == {} and s.get("cursor") == "0"
    assert s.get("cursor:7") is None and s.get("mounts") is None
    s.close()
