"""End to end: several `ferry sync` clients (separate homes) against one real server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support import foldfs
from tests.support.servers import Device, FerryServer


def tree(root: Path) -> dict[str, tuple[str, bytes | None, bool]]:
    """Relative path -> (kind, content, executable) for everything but Ferry's own files."""
    out: dict[str, tuple[str, bytes | None, bool]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".ferry-")]
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            out[str(rel / d)] = ("dir", None, False)
        for f in filenames:
            if f.startswith(".ferry-"):
                continue
            full = Path(dirpath) / f
            out[str(rel / f)] = ("file", full.read_bytes(), bool(full.stat().st_mode & 0o100))
    return out


class Client:
    def __init__(self, device: Device, folder: Path) -> None:
        self.device, self.folder = device, folder

    def sync(self, *extra: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = self.device.run("sync", str(self.folder), "--once", *extra, timeout=300)
        if ok:
            assert r.returncode == 0, r.stderr
        return r

    def status(self) -> dict:
        r = self.device.run("status", "--json", check=True)
        return json.loads(r.stdout)[str(self.folder.resolve())]

    def write(self, rel: str, data: bytes, *, age: float = 5.0) -> Path:
        """Write a file as an editor would, dated a little in the past (so it counts as settled)."""
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        when = time.time() - age
        os.utime(path, (when, when))
        return path


@pytest.fixture
def clients(make_server: Callable[..., FerryServer], tmp_path: Path) -> Callable[[int], list[Client]]:
    server = make_server("file")
    assert server.admin("user", "add", "u", "--password-stdin", stdin="pw\n").returncode == 0

    def make(n: int) -> list[Client]:
        out = []
        for i in range(n):
            dev = Device(tmp_path / f"home{i}", server).login("u", "pw", device=f"dev{i}")
            out.append(Client(dev, tmp_path / f"Ferry{i}"))
        return out

    return make


def test_two_clients_converge_on_files_folders_and_metadata(clients) -> None:
    a, b = clients(2)
    a.write("docs/report.txt", b"hello")
    a.write("empty.bin", b"")
    script = a.write("bin/run.sh", b"#!/bin/sh\n")
    script.chmod(0o755)
    os.utime(script, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    (a.folder / "photos" / "2026").mkdir(parents=True)
    big = random.Random(3).randbytes(3 * 1024 * 1024 + 7)
    a.write("big.bin", big)
    a.sync()
    b.sync()
    assert tree(b.folder) == tree(a.folder)
    assert (b.folder / "bin" / "run.sh").stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert a.status()["state"] == "up to date" and b.status()["state"] == "up to date"

    # edit on B, delete and add on A, then both ways
    b.write("docs/report.txt", b"hello, edited on b")
    (a.folder / "empty.bin").unlink()
    a.write("photos/2026/cat.jpg", b"\xff\xd8 cat")
    b.sync()
    a.sync()
    b.sync()
    assert tree(a.folder) == tree(b.folder)
    assert (a.folder / "docs" / "report.txt").read_bytes() == b"hello, edited on b"
    assert not (b.folder / "empty.bin").exists()
    assert (b.folder / "photos" / "2026" / "cat.jpg").read_bytes() == b"\xff\xd8 cat"


async def _count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def test_rename_and_folder_move_send_no_bytes_and_keep_history(clients) -> None:
    a, b = clients(2)
    a.write("dir/one.bin", random.Random(1).randbytes(300_000))
    a.write("dir/sub/two.bin", random.Random(2).randbytes(300_000))
    a.write("three.txt", b"three")
    a.sync()
    b.sync()
    db = a.device.server.database_url
    uploads = asyncio.run(_count(db, "SELECT count(*) FROM uploads"))
    files = asyncio.run(_count(db, "SELECT count(DISTINCT file_id) FROM versions WHERE kind = 'file'"))
    os.rename(a.folder / "three.txt", a.folder / "renamed.txt")
    os.rename(a.folder / "dir", a.folder / "moved")
    a.sync()
    b.sync()
    assert tree(a.folder) == tree(b.folder)
    assert (b.folder / "moved" / "sub" / "two.bin").exists() and not (b.folder / "dir").exists()
    assert asyncio.run(_count(db, "SELECT count(*) FROM uploads")) == uploads  # no block was sent
    # the moved files are the same files (same ids), with their history
    assert (
        asyncio.run(_count(db, "SELECT count(DISTINCT file_id) FROM versions WHERE kind = 'file'")) == files
    )


def test_concurrent_edits_keep_both_as_conflicted_copy(clients) -> None:
    a, b = clients(2)
    a.write("notes.txt", b"base")
    a.sync()
    b.sync()
    a.write("notes.txt", b"edit from a", age=3)
    b.write("notes.txt", b"edit from b", age=2)
    a.sync()
    b.sync()
    a.sync()
    assert tree(a.folder) == tree(b.folder)
    contents = {k: v[1] for k, v in tree(a.folder).items()}
    assert contents["notes.txt"] == b"edit from a"
    copies = [k for k in contents if k.startswith("notes (conflicted copy from dev1 ")]
    assert len(copies) == 1 and copies[0].endswith(").txt") and contents[copies[0]] == b"edit from b"
    assert b.status()["conflicts"] == ["/" + copies[0]]


def test_edit_beats_delete_both_ways(clients) -> None:
    a, b = clients(2)
    a.write("x.txt", b"x")
    a.write("y.txt", b"y")
    a.sync()
    b.sync()
    (a.folder / "x.txt").unlink()
    b.write("x.txt", b"x edited on b")
    b.write("y.txt", b"y edited on b")
    b.sync()  # b's edits land first; a's delete of x is now stale
    (a.folder / "y.txt").unlink()
    a.sync()
    b.sync()
    assert tree(a.folder) == tree(b.folder)
    assert (a.folder / "x.txt").read_bytes() == b"x edited on b"
    assert (a.folder / "y.txt").read_bytes() == b"y edited on b"


def test_ignores_symlinks_and_status(clients) -> None:
    (a,) = clients(1)
    a.write(".ferryignore", b"*.log\nbuild/\n")
    a.write("keep.txt", b"keep")
    a.write("debug.log", b"noise")
    a.write("build/out.o", b"obj")
    a.write("notes.txt.swp", b"vim")
    a.write("~$report.docx", b"office lock")
    os.symlink("/etc/passwd", a.folder / "link")
    a.sync()
    listed = {e["path"] for e in json.loads(a.device.run("ls", "--json", check=True).stdout)}
    assert listed == {"/.ferryignore", "/keep.txt"}
    status = a.status()
    assert status["skipped"] == {"/link": "symbolic link (not followed)"}


def test_offline_edits_are_committed_when_the_server_is_back(clients) -> None:
    a, b = clients(2)
    a.write("f.txt", b"v1")
    a.sync()
    b.sync()
    server = a.device.server
    server.stop()
    a.write("f.txt", b"v2 written offline")
    a.write("new.txt", b"new offline")
    r = a.device.run("sync", str(a.folder), "--once", "--retry-for", "1")
    assert r.returncode == 3 and "cannot reach the server" in r.stderr
    server.start()
    a.sync()
    b.sync()
    assert (b.folder / "f.txt").read_bytes() == b"v2 written offline"
    assert (b.folder / "new.txt").read_bytes() == b"new offline"


def test_mass_delete_waits_for_confirmation(clients) -> None:
    a, b = clients(2)
    for i in range(120):
        a.write(f"many/{i:03}.txt", f"file {i}".encode())
    a.sync()
    b.sync()
    for i in range(120):
        (a.folder / "many" / f"{i:03}.txt").unlink()
    r = a.sync()
    assert "120 local deletions not applied" in r.stderr
    assert a.status()["deletions_waiting"] == 120
    b.sync()
    assert len(list((b.folder / "many").iterdir())) == 120  # nothing was deleted anywhere
    a.sync("--confirm-deletes")
    b.sync()
    assert not any((b.folder / "many").iterdir()) if (b.folder / "many").exists() else True
    assert a.status()["deletions_waiting"] == 0


def test_missing_root_is_refused_not_mirrored_as_deletes(clients) -> None:
    a, b = clients(2)
    a.write("precious.txt", b"do not delete")
    a.sync()
    b.sync()
    os.rename(a.folder, a.folder.with_name("elsewhere"))
    a.folder.mkdir()  # an empty folder where the synced one was (e.g. an unmounted disk)
    r = a.sync(ok=False)
    assert r.returncode == 1 and "marker" in r.stderr
    b.sync()
    assert (b.folder / "precious.txt").read_bytes() == b"do not delete"


def test_insert_at_start_of_big_file_sends_about_one_block(clients) -> None:
    a, b = clients(2)
    data = random.Random(9).randbytes(12 * 1024 * 1024)
    a.write("big.bin", data)
    a.sync()
    b.sync()
    db = a.device.server.database_url
    before = asyncio.run(_count(db, "SELECT coalesce(sum(size), 0) FROM blocks"))
    a.write("big.bin", b"!" + data)
    rechunked = _sync_counting_rechunks(a)
    assert rechunked == 0  # the upload used the block list the scan had just computed
    fetched = _sync_counting_fetches(b)
    assert (b.folder / "big.bin").read_bytes() == b"!" + data
    sent = asyncio.run(_count(db, "SELECT coalesce(sum(size), 0) FROM blocks")) - before
    assert 0 < sent <= 2 * 4 * 1024 * 1024
    # and B takes only the changed blocks from the server: the rest it copies from its old copy
    assert 0 < sum(fetched) <= 2 * 4 * 1024 * 1024, fetched


def _sync_counting_rechunks(c: Client) -> int:
    """`sync --once` for ``c``, in-process; how many times an upload chunked a file itself."""
    from client import engine as engine_mod
    from client import transfer
    from client.home import load_credentials

    calls = 0
    real = transfer._send_blocks

    async def counting(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        await real(*args, **kwargs)

    transfer._send_blocks = counting  # type: ignore[assignment]
    try:
        assert asyncio.run(
            engine_mod.sync_once(c.folder, c.device.home, load_credentials(c.device.home), False, 30)
        )
    finally:
        transfer._send_blocks = real
    return calls


def _sync_counting_fetches(c: Client) -> list[int]:
    """`sync --once` for ``c``, in-process, returning the size of every block it fetched from the server."""
    from client import engine as engine_mod
    from client.home import load_credentials
    from client.transport import Connection

    fetched: list[int] = []
    real = Connection.get_block

    async def counting(self: Connection, h: bytes) -> bytes | memoryview:
        data = await real(self, h)
        fetched.append(len(data))
        return data

    Connection.get_block = counting  # type: ignore[method-assign]
    try:
        assert asyncio.run(
            engine_mod.sync_once(c.folder, c.device.home, load_credentials(c.device.home), False, 30)
        )
    finally:
        Connection.get_block = real  # type: ignore[method-assign]
    return fetched


def test_three_clients_converge(clients) -> None:
    cs = clients(3)
    for i, c in enumerate(cs):
        c.write(f"from{i}/file.txt", f"made on {i}".encode())
        c.write("shared.txt", f"version {i}".encode(), age=10 - i)
    for _ in range(2):
        for c in cs:
            c.sync()
    trees = [tree(c.folder) for c in cs]
    assert trees[0] == trees[1] == trees[2]
    contents = sorted(v[1] for k, v in trees[0].items() if k.startswith("shared"))
    assert contents == [b"version 0", b"version 1", b"version 2"]  # one wins, two conflicted copies


def test_live_sync_delivers_changes_both_ways(clients) -> None:
    a, b = clients(2)
    a.folder.mkdir()
    b.folder.mkdir()
    procs = [c.device.popen("sync", str(c.folder)) for c in (a, b)]
    try:
        a.write("live.txt", b"from a", age=0)
        wait_for(
            lambda: (b.folder / "live.txt").exists() and (b.folder / "live.txt").read_bytes() == b"from a"
        )
        b.write("sub/reply.txt", b"from b", age=0)
        wait_for(lambda: (a.folder / "sub" / "reply.txt").exists())
        assert (a.folder / "sub" / "reply.txt").read_bytes() == b"from b"
        os.rename(a.folder / "live.txt", a.folder / "sub" / "moved.txt")
        wait_for(lambda: (b.folder / "sub" / "moved.txt").exists() and not (b.folder / "live.txt").exists())
        # b's own downloads were not echoed back as uploads: one version per change, all made by a
        db = a.device.server.database_url
        sql = "SELECT count(*) FROM versions v JOIN devices d USING (device_id) WHERE v.path LIKE '%{}' AND d.name = '{}'"
        assert asyncio.run(_count(db, sql.format("live.txt", "dev1"))) == 0
        assert asyncio.run(_count(db, sql.format("moved.txt", "dev1"))) == 0
        assert asyncio.run(_count(db, sql.format("reply.txt", "dev0"))) == 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_client_killed_mid_upload_resumes_without_resending(clients) -> None:
    (a,) = clients(1)
    data = random.Random(21).randbytes(192 * 1024 * 1024)  # big enough to be caught mid-way
    a.write("video.bin", data)
    db = a.device.server.database_url
    proc = a.device.popen("sync", str(a.folder), "--once")
    while asyncio.run(_count(db, "SELECT count(*) FROM uploads")) < 3:
        assert proc.poll() is None, "the sync finished before it could be interrupted"
    proc.kill()
    proc.wait()
    # the server finishes (or drops) what the killed client had in flight: wait until that settles
    before, deadline = -1, time.monotonic() + 30
    while (now := asyncio.run(_count(db, "SELECT count(*) FROM uploads"))) != before:
        assert time.monotonic() < deadline, "uploads kept arriving after the client was killed"
        before = now
        time.sleep(0.3)  # (a quiet interval is what is awaited: no event marks it)
    cut = asyncio.run(_count(db, "SELECT (extract(epoch FROM max(created_at)) * 1e6)::bigint FROM uploads"))
    assert asyncio.run(_count(db, "SELECT count(*) FROM versions WHERE kind = 'file'")) == 0
    a.sync()
    resent = asyncio.run(
        _count(db, f"SELECT count(*) FROM uploads WHERE created_at > to_timestamp({cut} / 1e6::float8)")
    )
    total = asyncio.run(_count(db, "SELECT count(*) FROM uploads"))
    assert resent == total - before  # only blocks the server did not have yet were sent again
    listed = json.loads(a.device.run("ls", "--json", check=True).stdout)
    assert [(e["path"], e["size"]) for e in listed] == [("/video.bin", len(data))]


def test_client_killed_mid_download_leaves_no_partial_file(clients) -> None:
    a, b = clients(2)
    data = random.Random(22).randbytes(64 * 1024 * 1024)
    a.write("video.bin", data)
    a.sync()
    b.folder.mkdir()
    proc = b.device.popen("sync", str(b.folder), "--once")
    staging = b.folder / ".ferry-staging"
    while not (staging.exists() and any(staging.iterdir())):
        assert proc.poll() is None, "the download finished before it could be interrupted"
    proc.kill()
    proc.wait()
    final = b.folder / "video.bin"
    assert not final.exists() or final.read_bytes() == data  # never a partial file at the final path
    b.sync()
    assert final.read_bytes() == data
    assert not any(staging.iterdir())


def test_name_collisions_case_renames_and_special_files(clients) -> None:
    a, b = clients(2)
    nfc, nfd = "caf\u00e9.txt", "cafe\u0301.txt"
    a.write(nfc, b"composed")
    a.write(nfd, b"decomposed")  # a different name on this filesystem, the same name on the wire
    a.write("Readme.md", b"readme")
    os.mkfifo(a.folder / "pipe")
    a.sync()
    b.sync()
    names = sorted(k for k in tree(b.folder))
    assert nfc in names and any(n.startswith("caf\u00e9 (conflicted copy from dev0") for n in names)
    assert sorted(v[1] for k, v in tree(b.folder).items() if k.startswith("caf")) == [
        b"composed",
        b"decomposed",
    ]
    assert a.status()["skipped"]["/pipe"].startswith("not a regular file")
    os.rename(a.folder / "Readme.md", a.folder / "README.md")  # case-only rename
    a.sync()
    b.sync()
    assert (b.folder / "README.md").read_bytes() == b"readme" and not (b.folder / "Readme.md").exists()


def test_names_differing_only_in_case_are_both_kept_by_a_case_insensitive_device(
    clients, monkeypatch
) -> None:
    linux, mac = clients(2)
    linux.write("Readme.md", b"older")  # the older file keeps its name on every device
    linux.write("Docs/a.txt", b"a")
    linux.sync()
    linux.write("README.md", b"newer")
    linux.write("docs/b.txt", b"b")  # a second folder that is the same folder once case is folded
    linux.sync()
    monkeypatch.setenv("FERRY_CASE_INSENSITIVE", "1")  # mac behaves as on a case-insensitive disk
    mac.sync()
    monkeypatch.setenv("FERRY_CASE_INSENSITIVE", "0")
    linux.sync()
    for c in (linux, mac):
        files = {k: v[1] for k, v in tree(c.folder).items() if v[0] == "file"}
        assert len({k.casefold() for k in files}) == len(files), files  # a folding disk can hold them all
        assert files["Readme.md"] == b"older" and files["Docs/a.txt"] == b"a"
        assert sorted(files.values()) == [b"a", b"b", b"newer", b"older"]  # nothing lost, nothing twice
        renamed = [k for k in files if "(conflicted copy from dev1" in k]
        assert sorted(files[k] for k in renamed) == [b"b", b"newer"], files  # README.md and docs/ moved aside
    assert tree(linux.folder) == tree(mac.folder)
    assert any("conflicted copy" in c for c in mac.status()["conflicts"])


@pytest.mark.skipif(bool(foldfs.WHY_NOT), reason=foldfs.WHY_NOT or "FUSE available")
def test_sync_on_a_real_case_insensitive_normalising_filesystem(clients, tmp_path) -> None:
    linux, other = clients(2)
    with foldfs.mounted(tmp_path / "backing", tmp_path / "mnt") as mnt:
        mac = Client(other.device, mnt / "Ferry")  # no override: the client's probe finds the folding
        linux.write("Readme.md", b"older")
        linux.sync()
        linux.write("README.md", b"newer")
        linux.write("Docs/a.txt", b"a")
        linux.sync()
        mac.sync()
        linux.sync()
        files = {k: v[1] for k, v in tree(mac.folder).items() if v[0] == "file"}
        assert sorted(files.values()) == [b"a", b"newer", b"older"] and files["Readme.md"] == b"older"
        assert tree(linux.folder) == tree(mac.folder)
        os.rename(linux.folder / "Docs" / "a.txt", linux.folder / "Docs" / "A.txt")  # case-only, remote
        linux.sync()
        mac.sync()
        assert os.listdir(mac.folder / "Docs") == ["A.txt"]
        os.rename(mac.folder / "Readme.md", mac.folder / "readme.md")  # case-only, local
        mac.sync()
        linux.sync()
        assert (linux.folder / "readme.md").read_bytes() == b"older" and not (
            linux.folder / "Readme.md"
        ).exists()
        mac.write("cafe\u0301.txt", b"nfd")  # kept decomposed by this disk, NFC on the wire
        mac.sync()
        linux.sync()
        assert (linux.folder / "caf\u00e9.txt").read_bytes() == b"nfd"
        assert "cafe\u0301.txt" in os.listdir(mac.folder)  # not renamed on the disk that made it
        mac.sync()
        assert tree(linux.folder) == {unicodedata.normalize("NFC", k): v for k, v in tree(mac.folder).items()}
        assert not [c for c in mac.status()["conflicts"] if "caf" in c]


def test_file_still_being_written_is_not_uploaded_until_its_writer_is_done(clients) -> None:
    (a,) = clients(1)
    a.folder.mkdir()
    a.write("done.txt", b"done", age=300)

    def listed() -> dict[str, int]:
        return {e["path"]: e["size"] for e in json.loads(a.device.run("ls", "--json", check=True).stdout)}

    with open(a.folder / "growing.log.part", "wb") as writer:  # an app still writing it
        writer.write(b"half")
        writer.flush()
        engine_status = _sync_with_settle(a, "60000", expect_ok=False)
        assert "still being written" in engine_status["skipped"]["/growing.log.part"]
        assert listed() == {"/done.txt": 4}
        writer.write(b" and the rest")
    # closed a moment ago: with no writer left it counts as complete at once (no settle wait)
    _sync_with_settle(a, "60000", expect_ok=True)
    assert listed() == {"/done.txt": 4, "/growing.log.part": 17}
    with open(a.folder / "app.log", "wb") as log:  # held open for good, as a daemon's log is
        log.write(b"line\n")
        log.flush()
        old = time.time() - 120
        os.utime(a.folder / "app.log", (old, old))  # but left alone for longer than the settle time
        _sync_with_settle(a, "60000", expect_ok=True)
    assert listed()["/app.log"] == 5


def _sync_with_settle(c: Client, settle_ms: str, expect_ok: bool) -> dict:
    env = {**os.environ, "FERRY_HOME": str(c.device.home), "FERRY_SETTLE_MS": settle_ms}
    from tests.support.servers import FERRY

    # --once waits out unsettled files round by round; give it a bound by running the engine in-process
    if expect_ok:
        r = subprocess.run([*FERRY, "sync", str(c.folder), "--once"], env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return c.status()
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from client import engine\n"
        "from client.home import load_credentials\n"
        "home = Path(sys.argv[1]); e = engine.Engine(Path(sys.argv[2]), home, load_credentials(home))\n"
        "e.check_root()\n"
        "asyncio.run(e.cycle()); e._write_status()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(c.device.home), str(c.folder)], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return c.status()


def test_file_rewritten_between_scan_and_upload_is_not_committed(clients, monkeypatch) -> None:
    """An app starts rewriting a file (truncates it) just after the scan found it settled:
    the upload must notice the file is no longer what the scan saw and commit nothing, on
    the batched small-file path and the single big-file path alike (I3: no torn content)."""
    from client import engine as engine_mod
    from client.home import load_credentials

    (a,) = clients(1)
    small = a.write("small.txt", b"s" * 1000)
    big = a.write("big.bin", random.Random(7).randbytes(3 << 20))
    real_scan, scans = engine_mod.scan, []

    def scan_then_truncate(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_scan(*args, **kwargs)
        scans.append(out)
        if len(scans) == 1:
            for f in (small, big):
                os.truncate(f, 0)  # the app's rewrite begins: empty for now
        return out

    monkeypatch.setattr(engine_mod, "scan", scan_then_truncate)
    engine = engine_mod.Engine(a.folder, a.device.home, load_credentials(a.device.home))
    engine.check_root()
    try:
        actions = asyncio.run(engine.cycle())
    finally:
        engine.state.close()
    assert {getattr(x, "path", None) for x in actions} == {"/small.txt", "/big.bin"}  # it did try
    listed = {e["path"] for e in json.loads(a.device.run("ls", "--json", check=True).stdout)}
    assert listed == set(), "a file emptied after the scan was committed"

    a.write("small.txt", b"final small")  # the app finishes its save
    a.write("big.bin", b"final big" * 1000)
    a.sync()
    for name, data in (("small.txt", b"final small"), ("big.bin", b"final big" * 1000)):
        got = a.folder.parent / f"got-{name}"
        a.device.run("get", f"/{name}", str(got), check=True)
        assert got.read_bytes() == data
        history = json.loads(a.device.run("history", f"/{name}", "--json", check=True).stdout)
        assert len(history) == 1, history  # only the finished save, never the empty one
