"""PostgreSQL going away under a running server: a connection reset just
before or just after a commit transaction's ``COMMIT`` reaches the database
(through a proxy in front of the shared PostgreSQL), and a private cluster
crashed (``pg_ctl stop -m immediate``) and started again while a client syncs.
The server recovers without a restart, the client's retries never make a
second version, and nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.crash import Oracle, check_server, file_blocks, server_tree, synced_versions
from tests.support.faultproxy import FaultProxy
from tests.support.private_pg import PrivatePostgres, available
from tests.support.servers import Device, FerryServer


def _versions(database_url: str) -> dict[str, int]:
    async def go() -> dict[str, int]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT path, count(*) AS n FROM versions WHERE kind = 'file' GROUP BY path"
            )
        finally:
            await conn.close()
        return {r["path"]: r["n"] for r in rows}

    return asyncio.run(go())


def _sync_until_done(device: Device, root: Path, tries: int = 5) -> int:
    """``ferry sync --once`` until it succeeds; how many runs failed first."""
    for failed in range(tries):
        if device.run("sync", str(root), "--once").returncode == 0:
            return failed
    raise AssertionError(f"sync never succeeded: {device.run('status').stdout}")


@pytest.mark.parametrize("when", ["before", "after"])
def test_connection_reset_at_commit(database_url: str, tmp_path: Path, when: str) -> None:
    pg_port = int(database_url.split("@127.0.0.1:", 1)[1].split("/", 1)[0])
    proxy = FaultProxy(pg_port).start()
    server = FerryServer(tmp_path / "server", database_url.replace(f":{pg_port}/", f":{proxy.port}/"))
    server.start()
    try:
        assert server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
        device = Device(tmp_path / "home", server).login("alice", "pw")
        root = tmp_path / "sync"
        root.mkdir()
        oracle = Oracle(root, random.Random(5))
        oracle.write("/small.txt", 5_000)
        oracle.write("/big.bin", 2_500_000)
        proxy.cut = (b"COMMIT;", when)  # the first commit transaction loses its connection
        _sync_until_done(device, root)
        assert proxy.cuts == 1
        assert _versions(database_url) == {"/small.txt": 1, "/big.bin": 1}  # never a second version
        assert oracle.converged(root) == []
        acked = {v: d for v, d in synced_versions(device.home, root).values()}
        assert check_server(database_url, file_blocks(server.data_dir / "blocks"), acked) == []
        assert device.run("ls", "/").returncode == 0  # the server serves on, unrestarted
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
        proxy.stop()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    why = available()
    if why:
        pytest.skip(f"no private PostgreSQL cluster: {why}")
    # not under tmp_path: its parents are private to root, and the cluster may run as postgres
    folder = Path(tempfile.mkdtemp(prefix="ferry-pg-"))
    folder.chmod(0o755)
    pg = PrivatePostgres(folder / "pg").start()
    yield pg
    pg.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_postgres_crashed_and_restarted_during_syncs(private_pg: PrivatePostgres, tmp_path: Path) -> None:
    rng = random.Random(11)
    server = FerryServer(tmp_path / "server", private_pg.url)
    server.start()
    to_server = FaultProxy(server.port).start()  # to see when the client is busy uploading
    try:
        assert server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
        device = Device(tmp_path / "home", server)
        device.run("login", f"http://127.0.0.1:{to_server.port}", "--user", "alice", "--password-stdin",
                   stdin="pw\n", check=True)  # fmt: skip
        root = tmp_path / "sync"
        root.mkdir()
        oracle = Oracle(root, rng)
        acked: dict[int, bytes | None] = {}
        mid_sync = failed_runs = 0
        for _round in range(4):
            for i in range(4):
                oracle.write(f"/r{_round}-{i}.bin", rng.choice([20_000, 1_500_000, 3_000_000]))
            start = to_server.up
            sync = device.popen("sync", str(root), "--once")
            while to_server.up - start < 300_000 and sync.poll() is None:
                time.sleep(0.005)
            mid_sync += sync.poll() is None
            private_pg.restart()  # immediate: a crash of the database alone, mid-upload
            sync.communicate(timeout=120)
            failed_runs += sync.returncode != 0
            failed_runs += _sync_until_done(device, root)
            acked.update(synced_versions(device.home, root).values())
            problems = check_server(private_pg.url, file_blocks(server.data_dir / "blocks"), acked)
            problems += oracle.converged(root)
            tree = server_tree(private_pg.url)
            problems += [f"server {p}: not the latest" for p, d in tree.items() if oracle.latest.get(p) != d]
            assert not problems, "\n".join(problems)
        assert mid_sync >= 3  # the crashes came while the client was uploading
        assert server.proc is not None and server.proc.poll() is None  # recovered by itself
        print(
            f"PostgreSQL crashed 4 times ({mid_sync} mid-sync); sync runs that failed and ran again: {failed_runs}"
        )
    finally:
        server.stop()
        to_server.stop()


def test_live_client_rides_out_postgres_down_and_hears_pushes_again(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    """Found by this test: a live ``ferry sync`` exited ("database unavailable,
    retry shortly") when a cycle met the server without its database. It must
    wait (status ``offline``), then carry on; and hear of others' commits
    again once the server's LISTEN connection is back (it reconnects by itself)."""
    server = FerryServer(tmp_path / "server", private_pg.url)
    server.start()
    watcher: subprocess.Popen[str] | None = None
    try:
        assert server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
        writer = Device(tmp_path / "writer", server).login("alice", "pw", "writer")
        reader = Device(tmp_path / "reader", server).login("alice", "pw", "reader")
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir()
        oracle = Oracle(a, random.Random(2))
        oracle.write("/first.txt", 100)
        _sync_until_done(writer, a)
        watcher = reader.popen("sync", str(b))
        _wait(lambda: oracle.converged(b) == [], "the live client's first sync")
        private_pg.crash()
        (b / "made-meanwhile.txt").write_bytes(b"written while the database was down")
        _wait(
            lambda: watcher.poll() is not None or "offline" in reader.run("status").stdout, "status offline"
        )
        assert watcher.poll() is None, watcher.communicate()
        private_pg.start()
        oracle.write("/second.txt", 100)
        _sync_until_done(writer, a)
        # the live client carries on after the restart (a push wakes it, else its 30 s rescan:
        # telling the two apart by time failed on a loaded CI machine, so only arrival is checked;
        # 60 s was missed once too, in a CI run twice as slow as usual: a hang, not a speed, check)
        # (a client that stopped fails at once, with what it said: in a CI run it stopped on an
        # "internal" reply, the server having passed PostgreSQL's "the database system is not yet
        # accepting connections" on as internal rather than unavailable)
        _wait(lambda: watcher.poll() is not None or (b / "second.txt").exists(), "the change after the restart",
              within=180)  # fmt: skip
        assert watcher.poll() is None, watcher.communicate()
        _wait(lambda: _sync_until_done(writer, a) == 0 and (a / "made-meanwhile.txt").exists(), "the upload")
        assert server.proc is not None and server.proc.poll() is None
    finally:
        if watcher is not None:
            watcher.terminate()
            watcher.communicate(timeout=30)
        server.stop()


def _wait(done: Callable[[], bool], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        time.sleep(0.1)
