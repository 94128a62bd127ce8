"""The client's state keeps the three trees in memory between cycles; every
write must show in the next read, and a caller's edits must not leak back."""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from client.state import Observed, State
from protocol import messages as m
from protocol.framing import from_wire


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


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["change", "delete", "record", "observe", "unobserve", "moved", "forget"]),
            st.sampled_from(["/a", "/b", "/a/x", "/c"]),
            st.sampled_from(["/a", "/b", "/a/x", "/c"]),
            st.integers(1, 3),
        ),
        max_size=25,
    )
)
def test_trees_kept_in_memory_always_equal_the_database(ops: list[tuple[str, str, str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = State(Path(tmp) / "state.db")
        version = 100
        for op, path, other, file_id in ops:
            s.remote_tree(), s.synced_tree(), s.observed()  # cached from here on
            version += 1
            obs = Observed(version, version, version, bytes([file_id]) * 32, False)
            if op == "change":  # a server change; the same file_id elsewhere means a move
                s.apply_changes([entry(path, file_id, version)], version)
            elif op == "delete":
                s.apply_changes(
                    [m.Entry(path=path, kind="file", file_id=file_id, version=version, deleted=True)], 1
                )
            elif op == "record":
                s.record_many(
                    [(path, entry(path, file_id, version), obs), (other, entry(other, 9, version), None)]
                )
            elif op == "observe":
                s.observe(path, obs)
            elif op == "unobserve":
                s.unobserve(path)
            elif op == "moved" and not other.startswith(path):
                s.moved(path, other)
            elif op == "forget":
                s.forget(path, remote=file_id == 1)
            assert s.remote_tree() == s._read_remote()
            assert s.synced_tree() == s._read_synced()
            assert s.observed() == s._read_observed()
            for p in ("/a", "/b", "/a/x", "/c"):
                row = s.db.execute("SELECT entry FROM remote WHERE path = ?", (p,)).fetchone()
                assert s.remote_entry(p) == (
                    from_wire(m.Entry, orjson.loads(row[0]), "entry") if row else None
                )
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
