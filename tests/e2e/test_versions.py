"""End to end: version history, restore, undelete, snapshots, rewind,
retention, GC and fsck, through the `ferry` CLI against real `ferry server`
processes (real PostgreSQL; local disk and S3 via moto where blocks matter).

Times for snapshots and rewinds are taken from the server's own records
(`ferry history --json`, `ferry ls --json`), never from sleeping.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest

from client.history import iso
from client.transport import Connection, open_connection
from protocol import messages as m
from protocol.chunking import chunk_bytes
from protocol.errors import ErrorCode, ProtocolError
from tests.support.servers import Device, FerryServer


def data(seed: int, size: int = 200_000) -> bytes:
    return random.Random(seed).randbytes(size)


def ok_json(r: Any) -> Any:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def fails(r: Any, *words: str, code: int = 1) -> str:
    """The command failed with one line on stderr naming ``words``."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, r.stderr
    for w in words:
        assert w in line, (w, line)
    return line


def put(dev: Device, tmp: Path, remote: str, content: bytes) -> dict[str, Any]:
    local = tmp / f"up-{uuid.uuid4().hex}"
    local.write_bytes(content)
    try:
        return ok_json(dev.run("put", str(local), remote, "--json", "-q"))  # type: ignore[no-any-return]
    finally:
        local.unlink()


def get(dev: Device, tmp: Path, remote: str, *extra: str) -> bytes:
    out = tmp / f"down-{uuid.uuid4().hex}"
    dev.run("get", remote, str(out), "-q", *extra, check=True)
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def history(dev: Device, path: str) -> list[dict[str, Any]]:
    return ok_json(dev.run("history", path, "--json"))  # type: ignore[no-any-return]


def tree(dev: Device, tmp: Path, path: str = "/") -> dict[str, bytes | None]:
    """Every path under ``path`` now, with file contents (None for folders)."""
    out: dict[str, bytes | None] = {}
    for e in ok_json(dev.run("ls", path, "--json")):
        if e["kind"] == "dir":
            out[e["path"]] = None
            out.update(tree(dev, tmp, e["path"]))
        else:
            out[e["path"]] = get(dev, tmp, e["path"])
    return out


def entries(dev: Device, path: str = "/") -> list[dict[str, Any]]:
    """``ls --json`` of everything under ``path``, recursively."""
    out = []
    for e in ok_json(dev.run("ls", path, "--json")):
        out.append(e)
        if e["kind"] == "dir":
            out += entries(dev, e["path"])
    return out


def last_time(dev: Device) -> str:
    """The server's time of the newest version that stands now: a cut right after it."""
    return iso(max(e["committed_ns"] for e in entries(dev)))


def sql(db: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(db)
        try:
            return await conn.fetch(query, *args)  # type: ignore[no-any-return]
        finally:
            await conn.close()

    return asyncio.run(go())


def check_consistent(db: str) -> None:
    """The live tree (heads) is exactly the open path_history rows, and no
    file has two open rows."""
    diff = sql(
        db,
        "(SELECT namespace_id, path, file_id, version_id FROM heads"
        " EXCEPT SELECT namespace_id, path, file_id, version_id FROM path_history WHERE to_seq IS NULL)"
        " UNION ALL (SELECT namespace_id, path, file_id, version_id FROM path_history WHERE to_seq IS NULL"
        " EXCEPT SELECT namespace_id, path, file_id, version_id FROM heads)",
    )
    assert not diff, diff
    dup = sql(db, "SELECT file_id FROM path_history WHERE to_seq IS NULL GROUP BY 1 HAVING count(*) > 1")
    assert not dup, dup
    # path_history as written change by change equals what migration 002 derives from the journal
    derived = (
        "SELECT namespace_id, path, seq, next_seq, file_id, version_id FROM ("
        " SELECT j.namespace_id, v.path, j.seq, v.file_id, v.version_id, v.deleted,"
        " lead(j.seq) OVER (PARTITION BY j.namespace_id, v.file_id ORDER BY j.seq) AS next_seq"
        " FROM journal j JOIN versions v ON v.namespace_id = j.namespace_id AND v.version_id = j.version_id"
        ") h WHERE NOT deleted"
    )
    kept = "SELECT namespace_id, path, from_seq, to_seq, file_id, version_id FROM path_history"
    assert not sql(db, f"({derived} EXCEPT {kept}) UNION ALL ({kept} EXCEPT {derived})")
    # every change's rows share one commit time, strictly increasing with seq
    assert not sql(
        db,
        "SELECT 1 FROM journal a JOIN journal b ON a.namespace_id = b.namespace_id AND b.seq = a.seq + 1"
        " WHERE b.committed_at < a.committed_at",
    )


def head_seq(db: str) -> list[int]:
    return [r["head_seq"] for r in sql(db, "SELECT head_seq FROM namespaces ORDER BY namespace_id")]


# --- history, restore, get --version ---------------------------------------------------------


# history, undelete and rewind are metadata operations: the block backend only stores the
# blocks they put and get, which test_cli checks on both backends; run them on file blocks
# to keep the suite within its time budget (GC and fsck, which touch the store, run on both)
METADATA_ONLY = pytest.mark.parametrize("backend", ["file"])


@METADATA_ONLY
def test_history_restore_and_get_old_versions(alice: Device, tmp_path: Path) -> None:
    contents = [data(i, 200_000 + i * 70_000) for i in range(5)]
    puts = [put(alice, tmp_path, "/docs/report.txt", c) for c in contents]
    h = history(alice, "/docs/report.txt")
    assert [v["version"] for v in h] == [p["version"] for p in reversed(puts)]  # newest first
    assert [v["size"] for v in h] == [len(c) for c in reversed(contents)]
    assert [v["current"] for v in h] == [True, False, False, False, False]
    assert all(v["device"] == "laptop" and v["author"] == "alice" and not v["deleted"] for v in h)
    assert [v["time"] for v in h] == sorted((v["time"] for v in h), reverse=True)
    human = alice.run("history", "/docs/report.txt", check=True).stdout
    assert all(str(p["version"]) in human for p in puts) and "current" in human

    for p, c in zip(puts, contents, strict=True):
        assert get(alice, tmp_path, "/docs/report.txt", "--version", str(p["version"])) == c

    # restore makes an old version current as a NEW version; history is kept
    r = ok_json(alice.run("restore", "/docs/report.txt", "--version", str(puts[1]["version"]), "--json"))
    assert r["version"] not in [p["version"] for p in puts] and r["changes"] == 1
    assert get(alice, tmp_path, "/docs/report.txt") == contents[1]
    h2 = history(alice, "/docs/report.txt")
    assert len(h2) == 6 and h2[0]["version"] == r["version"] and h2[0]["current"]
    assert h2[1:] == [{**v, "current": False} for v in h]
    # restoring what is already current changes nothing
    again = ok_json(alice.run("restore", "/docs/report.txt", "--version", str(puts[1]["version"]), "--json"))
    assert again["version"] == r["version"] and again["changes"] == 0

    # history follows the file across a rename, from the old path too
    alice.run("mv", "/docs/report.txt", "/docs/final.txt", check=True)
    h3 = history(alice, "/docs/final.txt")
    assert [v["version"] for v in h3[1:]] == [v["version"] for v in h2]
    assert h3[0]["path"] == "/docs/final.txt" and h3[1]["path"] == "/docs/report.txt"
    assert history(alice, "/docs/report.txt") == h3
    assert get(alice, tmp_path, "/docs/final.txt", "--version", str(puts[3]["version"])) == contents[3]
    check_consistent(alice.server.database_url)


@METADATA_ONLY
def test_undelete_files_and_folders(alice: Device, tmp_path: Path) -> None:
    put(alice, tmp_path, "/docs/a.txt", b"a1")
    a2 = put(alice, tmp_path, "/docs/a.txt", b"a2")
    put(alice, tmp_path, "/docs/sub/b.txt", b"b")
    put(alice, tmp_path, "/docs/sub/c.txt", b"c")
    before = tree(alice, tmp_path, "/docs")

    alice.run("rm", "/docs/a.txt", check=True)
    gone = ok_json(alice.run("deleted", "--json"))
    assert [(g["path"], g["version"], g["deleted_by"], g["author"]) for g in gone] == [
        ("/docs/a.txt", a2["version"], "laptop", "alice")
    ]
    assert "/docs/a.txt" in alice.run("deleted", "/docs", check=True).stdout
    assert ok_json(alice.run("deleted", "/docs/sub", "--json")) == []
    r = alice.run("restore", "/docs/a.txt", check=True)
    assert "restored" in r.stdout
    assert get(alice, tmp_path, "/docs/a.txt") == b"a2"
    h = history(alice, "/docs/a.txt")  # one file throughout: versions, its deletion, its return
    assert [v["deleted"] for v in h] == [False, True, False, False] and h[2]["version"] == a2["version"]
    assert ok_json(alice.run("deleted", "--json")) == []

    # a whole folder comes back with everything that was in it
    alice.run("rm", "/docs", check=True)
    assert alice.run("ls", "/docs").returncode == 1
    gone = ok_json(alice.run("deleted", "--json"))
    assert sorted(g["path"] for g in gone) == sorted([*before, "/docs"])
    alice.run("restore", "/docs", check=True)
    assert tree(alice, tmp_path, "/docs") == before

    # a file inside a deleted folder: its parents are made again
    alice.run("rm", "/docs", check=True)
    alice.run("restore", "/docs/sub/c.txt", check=True)
    assert tree(alice, tmp_path, "/docs") == {"/docs/sub": None, "/docs/sub/c.txt": b"c"}
    check_consistent(alice.server.database_url)


# --- snapshots and rewind --------------------------------------------------------------------------


@METADATA_ONLY
def test_rewind_folder_undoes_creates_edits_deletes_and_renames(alice: Device, tmp_path: Path) -> None:
    db = alice.server.database_url
    files = {
        "/proj/keep.txt": b"keep",
        "/proj/edit.txt": b"edit v1",
        "/proj/gone.txt": b"gone",
        "/proj/old-name.txt": b"renamed later",
        "/proj/sub/deep.txt": b"deep",
        "/proj/out.txt": b"moved out later",
        "/other/x.txt": b"outside",
        "/other/in.txt": b"moved in later",
    }
    for path, content in files.items():
        put(alice, tmp_path, path, content)
    alice.run("mkdir", "/proj/empty", check=True)
    then = tree(alice, tmp_path, "/proj")
    other_then = tree(alice, tmp_path, "/other")
    cut = last_time(alice)
    ids_then = {e["path"]: e["file_id"] for e in entries(alice, "/proj")}

    # after the cut: create, edit, delete, rename a file and a folder, move in and out
    put(alice, tmp_path, "/proj/new.txt", b"new")
    put(alice, tmp_path, "/proj/newdir/n.txt", b"n")
    put(alice, tmp_path, "/proj/edit.txt", b"edit v2")
    alice.run("rm", "/proj/gone.txt", check=True)
    alice.run("rm", "/proj/empty", check=True)
    alice.run("mv", "/proj/old-name.txt", "/proj/new-name.txt", check=True)
    alice.run("mv", "/proj/sub", "/proj/sub2", check=True)
    alice.run("mv", "/proj/out.txt", "/other/out.txt", check=True)
    alice.run("mv", "/other/in.txt", "/proj/in.txt", check=True)
    put(alice, tmp_path, "/proj/keep.txt", b"keep")  # same bytes: no new version
    assert tree(alice, tmp_path, "/proj") != then

    # the snapshot shows the folder as it was, without changing anything
    seq = head_seq(db)
    snap = ok_json(alice.run("snapshot", "/proj", "--at", cut, "--json"))
    assert {e["path"]: e["file_id"] for e in snap} == ids_then
    assert {e["path"] for e in snap} == set(then)
    assert head_seq(db) == seq

    r = ok_json(alice.run("restore", "/proj", "--at", cut, "--json"))
    assert r["changes"] and head_seq(db) != seq
    now = tree(alice, tmp_path, "/proj")
    for path in sorted(set(then) | set(now)):
        assert now.get(path, "absent") == then.get(path, "absent"), path
    # renamed files came back as themselves (same file id, history kept)
    ids_now = {e["path"]: e["file_id"] for e in entries(alice, "/proj")}
    for path in ("/proj/old-name.txt", "/proj/sub", "/proj/sub/deep.txt", "/proj/edit.txt", "/proj/keep.txt"):
        assert ids_now[path] == ids_then[path], path
    assert [v["path"] for v in history(alice, "/proj/old-name.txt")][:3] == [
        "/proj/old-name.txt", "/proj/new-name.txt", "/proj/old-name.txt",
    ]  # fmt: skip
    # nothing outside the folder changed: out.txt stays in /other (and is back in /proj as a copy);
    # in.txt, moved in after the cut, is deleted from /proj, recoverable
    assert tree(alice, tmp_path, "/other") == {**{k: v for k, v in other_then.items() if k != "/other/in.txt"},
                                               "/other/out.txt": b"moved out later"}  # fmt: skip
    assert ids_now["/proj/out.txt"] != ids_then["/proj/out.txt"]
    deleted = {g["path"] for g in ok_json(alice.run("deleted", "--json"))}
    assert {"/proj/new.txt", "/proj/newdir", "/proj/newdir/n.txt", "/proj/in.txt"} <= deleted
    alice.run("restore", "/proj/in.txt", check=True)
    assert get(alice, tmp_path, "/proj/in.txt") == b"moved in later"

    # rewinding again to the same time: only in.txt (restored just now) goes
    again = ok_json(alice.run("restore", "/proj", "--at", cut, "--json"))
    assert again["changes"] == 1
    assert "nothing to change" in alice.run("restore", "/proj", "--at", cut, check=True).stdout
    check_consistent(db)


def test_rewind_swapped_names_and_folder_replaced_by_file(alice: Device, tmp_path: Path) -> None:
    put(alice, tmp_path, "/w/a", b"A")
    put(alice, tmp_path, "/w/b", b"B")
    put(alice, tmp_path, "/w/d/x", b"X")
    cut = last_time(alice)
    alice.run("mv", "/w/a", "/w/tmp", check=True)
    alice.run("mv", "/w/b", "/w/a", check=True)
    alice.run("mv", "/w/tmp", "/w/b", check=True)
    alice.run("mv", "/w/d/x", "/w/x", check=True)
    alice.run("rm", "/w/d", check=True)
    put(alice, tmp_path, "/w/d", b"now a file")
    ids = {e["path"]: e["file_id"] for e in ok_json(alice.run("snapshot", "/w", "--at", cut, "--json"))}
    alice.run("restore", "/w", "--at", cut, check=True)
    assert tree(alice, tmp_path, "/w") == {"/w/a": b"A", "/w/b": b"B", "/w/d": None, "/w/d/x": b"X"}
    after = {e["path"]: e["file_id"] for e in entries(alice, "/w")}
    assert after == ids
    check_consistent(alice.server.database_url)


def test_whole_tree_rewind_and_snapshot_of_root(alice: Device, tmp_path: Path) -> None:
    put(alice, tmp_path, "/a.txt", b"a")
    cut = last_time(alice)
    put(alice, tmp_path, "/b/c.txt", b"c")
    alice.run("rm", "/a.txt", check=True)
    assert [e["path"] for e in ok_json(alice.run("snapshot", "/", "--at", cut, "--json"))] == ["/a.txt"]
    alice.run("restore", "/", "--at", cut, check=True)
    assert tree(alice, tmp_path) == {"/a.txt": b"a"}
    out = alice.run("snapshot", "--at", cut, check=True).stdout
    assert "/a.txt" in out


def test_synced_device_applies_a_rewind(make_server: Callable[..., FerryServer], tmp_path: Path) -> None:
    server = make_server("file")
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    editor = Device(tmp_path / "editor", server).login("u", "pw", device="editor")
    synced = Device(tmp_path / "synced", server).login("u", "pw", device="desk")
    folder = tmp_path / "Ferry"
    folder.mkdir()
    put(editor, tmp_path, "/docs/a.txt", b"a1")
    put(editor, tmp_path, "/docs/old.txt", b"old")
    cut = last_time(editor)
    put(editor, tmp_path, "/docs/a.txt", b"a2")
    put(editor, tmp_path, "/docs/new.txt", b"new")
    editor.run("mv", "/docs/old.txt", "/docs/renamed.txt", check=True)
    synced.run("sync", str(folder), "--once", timeout=300, check=True)
    assert (folder / "docs" / "renamed.txt").read_bytes() == b"old"
    editor.run("restore", "/docs", "--at", cut, check=True)
    synced.run("sync", str(folder), "--once", timeout=300, check=True)
    files = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if ".ferry-" not in p.as_posix()
    )
    assert files == ["docs", "docs/a.txt", "docs/old.txt"]
    assert (folder / "docs" / "a.txt").read_bytes() == b"a1"
    assert (folder / "docs" / "old.txt").read_bytes() == b"old"


def test_device_away_while_history_was_pruned_catches_up(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    """Retention deletes the journal entries of pruned versions. A device whose cursor
    is older than them must still learn every edit, move and deletion since: each pruned
    entry has a later one for the same file (its replacement, move or tombstone)."""
    server = make_server("file")
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    editor = Device(tmp_path / "editor", server).login("u", "pw", device="editor")
    desk = Device(tmp_path / "desk", server).login("u", "pw", device="desk")
    folder = tmp_path / "Ferry"
    folder.mkdir()
    for name in ("a", "b", "c"):
        put(editor, tmp_path, f"/docs/{name}.txt", f"{name}1".encode())
    desk.run("sync", str(folder), "--once", timeout=300, check=True)
    put(editor, tmp_path, "/docs/a.txt", b"a2")
    put(editor, tmp_path, "/docs/a.txt", b"a3")
    editor.run("mv", "/docs/b.txt", "/docs/moved.txt", check=True)
    editor.run("rm", "/docs/c.txt", check=True)
    put(editor, tmp_path, "/docs/brief.txt", b"here and gone")  # created and deleted while desk was away
    editor.run("rm", "/docs/brief.txt", check=True)
    age_everything(server.database_url, 200)
    assert gc(server)["versions_pruned"] >= 5  # a1, a2, b1 at its old path, c1, brief
    desk.run("sync", str(folder), "--once", timeout=300, check=True)
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".ferry-" not in p.as_posix()
    }
    assert files == {"docs/a.txt": b"a3", "docs/moved.txt": b"b1"}
    assert sorted(e["path"] for e in entries(editor)) == ["/docs", "/docs/a.txt", "/docs/moved.txt"]
    check_consistent(server.database_url)


# --- bad input --------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_one_line_and_changes_nothing(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    server = make_server("file")
    for user in ("alice", "bob"):
        server.admin("user", "add", user, "--password-stdin", stdin="pw\n")
    alice = Device(tmp_path / "alice", server).login("alice", "pw")
    bob = Device(tmp_path / "bob", server).login("bob", "pw")
    db = server.database_url
    put(alice, tmp_path, "/first.txt", b"first")
    before_docs = last_time(alice)  # /docs does not exist yet
    v1 = put(alice, tmp_path, "/docs/report.txt", b"one")["version"]
    put(alice, tmp_path, "/docs/report.txt", b"two")
    other = put(alice, tmp_path, "/docs/other.txt", b"other")["version"]
    bobs = put(bob, tmp_path, "/docs/report.txt", b"bob's")["version"]
    put(alice, tmp_path, "/x/f.txt", b"f")
    fv = history(alice, "/x/f.txt")[0]["version"]
    alice.run("rm", "/x/f.txt", check=True)
    alice.run("mkdir", "/x/f.txt", check=True)  # a folder now stands where the file was
    tomb = history(alice, "/docs/other.txt")[0]["version"]
    seq = head_seq(db)

    # unknown version, another file's version, another user's version: one answer
    unknown = fails(
        alice.run("restore", "/docs/report.txt", "--version", "987654321"), "no version 987654321"
    )
    for v in (other, bobs):
        line = fails(alice.run("restore", "/docs/report.txt", "--version", str(v)), f"no version {v}")
        assert line == unknown.replace("987654321", str(v))
        fails(
            alice.run("get", "/docs/report.txt", str(tmp_path / "o"), "--version", str(v)), f"no version {v}"
        )
    assert not (tmp_path / "o").exists()
    fails(bob.run("get", "/docs/report.txt", str(tmp_path / "o"), "--version", str(v1)), f"no version {v1}")
    assert tomb == other  # not deleted: its only version
    # times: in the future, before the folder existed, malformed
    fails(alice.run("snapshot", "/docs", "--at", "2999-01-01T00:00:00Z"), "in the future")
    fails(alice.run("restore", "/docs", "--at", "2999-01-01T00:00:00Z"), "in the future")
    fails(alice.run("snapshot", "/docs", "--at", before_docs), "/docs did not exist at", "first appears")
    fails(alice.run("restore", "/docs", "--at", before_docs), "/docs did not exist at")
    fails(alice.run("snapshot", "/", "--at", "2001-01-01T00:00:00Z"), "/ did not exist at 2001-01-01")
    fails(alice.run("restore", "/", "--at", "2001-01-01T00:00:00Z"), "/ did not exist at 2001-01-01")
    r = alice.run("snapshot", "/docs", "--at", "yesterday")  # usage errors: argparse's usage + one line
    assert r.returncode == 2 and "not a time: 'yesterday'" in r.stderr.splitlines()[-1]
    assert alice.run("restore", "/docs", "--at", before_docs, "--version", "1").returncode == 2
    # restore onto a path where a folder now stands
    fails(alice.run("restore", "/x/f.txt", "--version", str(fv)), "/x/f.txt is a folder now")
    fails(alice.run("restore", "/x/f.txt"), "/x/f.txt exists")
    fails(alice.run("restore", "/docs/report.txt"), "exists", "--version")
    fails(alice.run("restore", "/nothing/here.txt"), "nothing was deleted there")
    fails(alice.run("history", "/nothing/here.txt"), "no such file")
    fails(alice.run("restore", "/", "--version", "1"), "/ has no versions")
    assert head_seq(db) == seq  # nothing changed
    assert get(alice, tmp_path, "/docs/report.txt") == b"two"


async def test_version_requests_are_authorised_per_namespace(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    server = await asyncio.to_thread(make_server, "file")
    for user in ("alice", "mallory"):
        r = await asyncio.to_thread(server.admin, "user", "add", user, "--password-stdin", stdin="pw\n")
        assert r.returncode == 0
    alice = await asyncio.to_thread(lambda: Device(tmp_path / "a", server).login("alice", "pw"))
    mallory = await asyncio.to_thread(lambda: Device(tmp_path / "m", server).login("mallory", "pw"))
    await asyncio.to_thread(put, alice, tmp_path, "/secret.txt", b"s")
    alice_conn = await _connect(alice)
    conn = await _connect(mallory)
    try:
        alice_ns = alice_conn.root_ns
        key = uuid.uuid4().hex
        for make in (
            lambda i: m.History(i, "/secret.txt", ns=alice_ns),
            lambda i: m.GetVersion(i, "/secret.txt", ns=alice_ns),
            lambda i: m.ListDeleted(i, "/", ns=alice_ns),
            lambda i: m.Snapshot(i, "/", 2**62, ns=alice_ns),
            lambda i: m.Restore(i, key, "/secret.txt", ns=alice_ns),
            lambda i: m.Rewind(i, key, "/", 0, ns=alice_ns),
        ):
            with pytest.raises(ProtocolError) as e:
                await conn.call(make)
            assert e.value.code == ErrorCode.NOT_FOUND and f"no namespace {alice_ns}" in e.value.message
        with pytest.raises(ProtocolError) as e:
            await conn.call(lambda i: m.History(i, "/a/../b"))
        assert e.value.code == ErrorCode.BAD_PATH
    finally:
        await conn.close()
        await alice_conn.close()


# --- GC -----------------------------------------------------------------------------------------------


async def _connect(dev: Device) -> Connection:
    creds = json.loads((dev.home / "credentials.json").read_text())
    return await open_connection(creds["server"], creds["token"])


def stored(server: FerryServer) -> set[str]:
    """Hex hashes of every block object in the server's store."""
    if server.blocks and server.blocks.startswith("s3://"):
        s3 = boto3.client("s3", endpoint_url=server.s3_endpoint)
        bucket = server.blocks.removeprefix("s3://")
        keys: set[str] = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys |= {o["Key"].rsplit("/", 1)[1] for o in page.get("Contents", [])}
        return keys
    return {p.name for p in (server.data_dir / "blocks").glob("??/*") if len(p.name) == 64}


def hashes_of(content: bytes) -> set[str]:
    return {b.hash.hex() for b in chunk_bytes(content)}


def gc(server: FerryServer, *args: str) -> dict[str, Any]:
    return ok_json(server.admin("gc", "--json", *args))  # type: ignore[no-any-return]


def age_everything(db: str, days: int) -> None:
    """Pretend everything so far happened ``days`` ago."""
    shift = f"interval '{days} days'"
    for q in (
        f"UPDATE journal SET committed_at = committed_at - {shift}",
        f"UPDATE versions SET created_at = created_at - {shift}",
        f"UPDATE namespaces SET created_at = created_at - {shift}, last_commit_at = last_commit_at - {shift}",
        f"UPDATE uploads SET created_at = created_at - {shift}",
        f"UPDATE blocks SET created_at = created_at - {shift}",
    ):
        sql(db, q)


async def _upload_only(dev: Device, blobs: list[bytes]) -> list[bytes]:
    """Send blocks without committing them (a commit still being prepared)."""
    conn = await _connect(dev)
    try:
        hashes = []
        for blob in blobs:
            (block,) = chunk_bytes(blob)
            await conn.put_block(block.hash, blob)
            hashes.append(block.hash)
        return hashes
    finally:
        await conn.close()


def test_gc_frees_exactly_the_unreferenced_blocks(alice: Device, tmp_path: Path) -> None:
    server, db = alice.server, alice.server.database_url
    base = data(1, 3_000_000)
    v1 = base
    v2 = base[:1_000_000] + b"edit" + base[1_000_000:]  # shares most blocks with v1
    other = data(2, 1_500_000)
    gone = data(3, 600_000)
    put(alice, tmp_path, "/big.bin", v1)
    put(alice, tmp_path, "/big.bin", v2)
    put(alice, tmp_path, "/other.bin", other)
    put(alice, tmp_path, "/gone.bin", gone)
    alice.run("rm", "/gone.bin", check=True)
    orphans = [data(10 + i, 100_000) for i in range(3)]
    orphan_hashes = {h.hex() for h in asyncio.run(_upload_only(alice, orphans))}
    everything = hashes_of(v1) | hashes_of(v2) | hashes_of(other) | hashes_of(gone) | orphan_hashes
    assert stored(server) == everything

    # within retention and the grace period nothing goes
    assert gc(server)["blocks_removed"] == 0 and stored(server) == everything
    # past the grace period the uploads nobody committed go, and only they
    dry = gc(server, "--gc-grace", "0", "--dry-run")
    assert dry["blocks_removed"] == len(orphan_hashes) and stored(server) == everything
    report = gc(server, "--gc-grace", "0")
    assert (report["blocks_removed"], report["versions_pruned"]) == (len(orphan_hashes), 0)
    assert stored(server) == everything - orphan_hashes

    # 200 days later, with the user's versions kept forever: nothing is pruned
    age_everything(db, 200)
    v1_time = history(alice, "/big.bin")[-1]["time"]
    put(alice, tmp_path, "/big.bin", other)  # v3 replaces v2 now; v1 was replaced 200 days ago
    assert server.admin("retention", "alice", "0").returncode == 0
    assert "forever" in server.admin("retention", "alice").stdout
    assert gc(server)["versions_pruned"] == 0
    # back to the server's 180 days: v1 (replaced 200 days ago) and the deleted file go;
    # v2 (replaced just now) and every current version stay
    assert "server's default" in server.admin("retention", "alice", "default").stdout
    live = hashes_of(v2) | hashes_of(other)
    expect = everything - orphan_hashes - live
    dry = gc(server, "--dry-run")
    assert dry["blocks_removed"] == len(expect) and dry["versions_pruned"] == 2
    report = gc(server)
    assert report["blocks_removed"] == len(expect) and report["versions_pruned"] == 2
    assert stored(server) == live
    assert gc(server, "--gc-grace", "0")["blocks_removed"] == 0  # nothing left to collect

    # what retention keeps is intact; what it pruned is gone, and old cuts are refused
    h = history(alice, "/big.bin")
    assert len(h) == 2
    assert get(alice, tmp_path, "/big.bin", "--version", str(h[1]["version"])) == v2
    assert get(alice, tmp_path, "/big.bin") == other and get(alice, tmp_path, "/other.bin") == other
    assert ok_json(alice.run("deleted", "--json")) == []
    fails(alice.run("restore", "/gone.bin"), "nothing was deleted there")
    fails(alice.run("snapshot", "/", "--at", v1_time), "older than the kept history")
    fails(alice.run("restore", "/", "--at", v1_time), "older than the kept history")
    fsck = ok_json(server.admin("fsck", "--json"))
    assert fsck["ok"] and fsck["blocks_checked"] == len(live)
    check_consistent(db)


async def test_gc_never_collects_blocks_a_commit_is_about_to_use(alice: Device, tmp_path: Path) -> None:
    server, db = alice.server, alice.server.database_url
    blob = data(42, 300_000)
    (h,) = await _upload_only(alice, [blob])

    # uploaded, not yet committed: the grace period keeps it
    r = await asyncio.to_thread(server.admin, "gc", "--json")
    assert json.loads(r.stdout)["blocks_removed"] == 0
    conn = await _connect(alice)
    try:
        done = await conn.call(
            lambda i: m.Commit(i, uuid.uuid4().hex, "/a.bin", None, len(blob), 1, [h]), m.Committed
        )
        assert done.entry.size == len(blob)
    finally:
        await conn.close()
    assert await asyncio.to_thread(get, alice, tmp_path, "/a.bin") == blob

    # a commit inside its transaction when GC runs (even with no grace): the block survives
    (h2,) = await _upload_only(alice, [blob2 := data(43, 300_000)])
    locker = await asyncpg.connect(db)
    conn = await _connect(alice)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(
            "LOCK TABLE journal IN EXCLUSIVE MODE"
        )  # the commit stops before its journal row
        commit = asyncio.ensure_future(
            conn.call(
                lambda i: m.Commit(i, uuid.uuid4().hex, "/b.bin", None, len(blob2), 1, [h2]), m.Committed
            )
        )
        await _until_waiting(locker)
        r = await asyncio.to_thread(server.admin, "gc", "--json", "--gc-grace", "0")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["blocks_removed"] == 0  # its row was locked by the commit: skipped
        await tx.rollback()
        assert (await commit).entry.size == len(blob2)
    finally:
        await conn.close()
        await locker.close()
    assert await asyncio.to_thread(get, alice, tmp_path, "/b.bin") == blob2

    # GC holding a block when a commit comes: the commit is told to send it again, and then succeeds
    (h3,) = await _upload_only(alice, [blob3 := data(44, 300_000)])
    locker = await asyncpg.connect(db)
    conn = await _connect(alice)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE uploads IN EXCLUSIVE MODE")  # GC stops after locking and deleting
        gc_run = asyncio.ensure_future(asyncio.to_thread(server.admin, "gc", "--json", "--gc-grace", "0"))
        await _until_waiting(locker, 1, gc_run)
        commit = asyncio.ensure_future(
            conn.call(
                lambda i: m.Commit(i, uuid.uuid4().hex, "/c.bin", None, len(blob3), 1, [h3]), m.Committed
            )
        )
        await _until_waiting(locker, 2, gc_run, commit)
        await tx.rollback()
        assert json.loads((await gc_run).stdout)["blocks_removed"] == 1
        with pytest.raises(ProtocolError) as e:
            await commit
        assert e.value.code == ErrorCode.MISSING_BLOCKS and e.value.detail == {"missing": [h3.hex()]}
        await conn.put_block(h3, blob3)
        done = await conn.call(
            lambda i: m.Commit(i, uuid.uuid4().hex, "/c.bin", None, len(blob3), 1, [h3]), m.Committed
        )
        assert done.entry.size == len(blob3)
    finally:
        await conn.close()
        await locker.close()
    assert await asyncio.to_thread(get, alice, tmp_path, "/c.bin") == blob3
    fsck = json.loads((await asyncio.to_thread(server.admin, "fsck", "--json")).stdout)
    assert fsck["ok"], fsck


async def _until_waiting(conn: asyncpg.Connection, count: int = 1, *also: asyncio.Future[Any]) -> None:
    """Until ``count`` other sessions wait on a lock (the event we race against);
    fails at once if one of ``also`` finished instead."""
    while True:
        await conn.execute("SELECT pg_stat_clear_snapshot()")  # the view is frozen per transaction
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        for f in also:
            assert not f.done(), f.result()
        await asyncio.sleep(0.01)


def test_gc_races_live_uploads_without_losing_a_block(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    server = make_server("file", extra=["--gc-every", "0.05", "--gc-grace", "0"])
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    dev = Device(tmp_path / "h", server).login("u", "pw")
    contents = {f"/f{i}.bin": data(100 + i, 700_000) for i in range(12)}
    for path, content in contents.items():  # GC runs every 50 ms meanwhile, collecting anything unused
        local = tmp_path / "up.bin"
        local.write_bytes(content)
        for _ in range(10):
            r = dev.run("put", str(local), path, "--json", "-q")
            # with no grace, a slow machine can lose the race three times in a row: the
            # client then says so and commits nothing, and trying again is the user's answer
            if r.returncode == 0 or "keeps losing blocks" not in r.stderr:
                break
        ok_json(r)
    for path, content in contents.items():
        assert get(dev, tmp_path, path) == content
    fsck = ok_json(server.admin("fsck", "--json"))
    assert fsck["ok"], fsck
    assert "gc failed" not in server.log()


def test_background_gc_collects_on_its_own(make_server: Callable[..., FerryServer], tmp_path: Path) -> None:
    server = make_server("file", extra=["--gc-every", "0.1", "--gc-grace", "0"])
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    dev = Device(tmp_path / "h", server).login("u", "pw")
    (h,) = asyncio.run(_upload_only(dev, [data(7, 100_000)]))
    deadline = time.monotonic() + 30
    while h.hex() in stored(server):  # the event: the background task's next run
        assert time.monotonic() < deadline, "the background GC never ran"
        time.sleep(0.05)
    assert not sql(server.database_url, "SELECT 1 FROM blocks")


# --- fsck ---------------------------------------------------------------------------------------------


def test_fsck_finds_missing_and_corrupt_blocks(server: FerryServer, alice: Device, tmp_path: Path) -> None:
    a, b = data(20, 900_000), data(21, 900_000)
    put(alice, tmp_path, "/a.bin", a)
    bv = put(alice, tmp_path, "/b.bin", b)["version"]
    ok = ok_json(server.admin("fsck", "--json"))
    assert ok["ok"] and ok["blocks_checked"] == len(hashes_of(a) | hashes_of(b))
    missing = sorted(hashes_of(a))[0]
    corrupt = sorted(hashes_of(b))[0]
    if server.blocks and server.blocks.startswith("s3://"):
        s3 = boto3.client("s3", endpoint_url=server.s3_endpoint)
        bucket = server.blocks.removeprefix("s3://")
        s3.delete_object(Bucket=bucket, Key=f"blocks/{missing[:2]}/{missing}")
        s3.put_object(Bucket=bucket, Key=f"blocks/{corrupt[:2]}/{corrupt}", Body=b"not the right bytes")
    else:
        (server.data_dir / "blocks" / missing[:2] / missing).unlink()
        path = server.data_dir / "blocks" / corrupt[:2] / corrupt
        path.chmod(0o644)
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"\x00bit rot\x00")

    r = server.admin("fsck", "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert (report["missing"], report["corrupt"], report["unrecorded"]) == ([missing], [corrupt], [])
    assert [(d["owner"], d["path"], d["current"], d["blocks"]) for d in report["damaged"]] == [
        ("alice", "/a.bin", True, [missing]), ("alice", "/b.bin", True, [corrupt]),
    ]  # fmt: skip
    human = server.admin("fsck")
    assert human.returncode == 1 and "1 missing, 1 corrupt" in human.stdout and "/a.bin" in human.stdout

    repaired = server.admin("fsck", "--repair")
    assert repaired.returncode == 1 and "2 versions marked damaged" in repaired.stdout
    for path in ("/a.bin", "/b.bin"):
        fails(alice.run("get", path, str(tmp_path / "out")), f"{path}: version", "is damaged", "no replica")
        assert not (tmp_path / "out").exists()
    assert history(alice, "/b.bin")[0]["damaged"]
    fails(alice.run("restore", "/b.bin", "--version", str(bv)), "is damaged")

    # the same content uploaded again heals the damaged version at the next repair
    put(alice, tmp_path, "/b-again.bin", b)
    r = server.admin("fsck", "--repair", "--json")
    healed = json.loads(r.stdout)
    assert (
        r.returncode == 1 and healed["healed"] == 1 and [d["path"] for d in healed["damaged"]] == ["/a.bin"]
    )
    assert healed["unrecorded"] == [missing]  # its row went at the first repair; still referenced
    assert get(alice, tmp_path, "/b.bin") == b
