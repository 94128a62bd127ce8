"""End to end: `ferry server` processes driven through the `ferry` CLI, as a
user would, on both block backends (local disk and S3 via moto's server)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import urllib.request
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tests.support.moto_server import free_port
from tests.support.servers import Device, FerryServer


def random_file(path: Path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def as_json(r) -> object:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_put_get_ls_and_tree_operations(alice: Device, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = random_file(src, 6 * 1024 * 1024 + 123)
    put = as_json(alice.run("put", str(src), "/isos/big.iso", "--json"))
    assert put["size"] == len(data) and put["sent"] == len(data)

    out = tmp_path / "copy.iso"
    got = as_json(alice.run("get", "/isos/big.iso", str(out), "--json"))
    assert out.read_bytes() == data and got["version"] == put["version"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ferry-tmp-")]

    listing = as_json(alice.run("ls", "/isos", "--json"))
    assert [(e["path"], e["kind"], e["size"]) for e in listing] == [("/isos/big.iso", "file", len(data))]
    assert listing[0]["content_hash"] and listing[0]["device"] == "laptop"
    human = alice.run("ls", check=True).stdout
    assert "isos/" in human

    # the same bytes again: nothing is sent, no new version
    again = as_json(alice.run("put", str(src), "/isos/big.iso", "--json"))
    assert again["sent"] == 0 and again["version"] == put["version"]

    # an insertion in the middle re-sends about one block, not the tail
    edited = data[: len(data) // 2] + b"inserted!" + data[len(data) // 2 :]
    src.write_bytes(edited)
    third = as_json(alice.run("put", str(src), "/isos/big.iso", "--json"))
    assert third["version"] != put["version"]
    assert 0 < third["sent"] <= 2 * 4 * 1024 * 1024 and third["sent"] < len(data) // 2
    alice.run("get", "/isos/big.iso", str(out), check=True)
    assert out.read_bytes() == edited

    alice.run("mkdir", "/a/b", check=True)
    alice.run("mv", "/a", "/c", check=True)
    assert [e["path"] for e in as_json(alice.run("ls", "/c", "--json"))] == ["/c/b"]
    assert alice.run("ls", "/a").returncode == 1
    alice.run("rm", "/c/b", check=True)
    assert as_json(alice.run("ls", "/c", "--json")) == []
    alice.run("mv", "/isos/big.iso", "/c/renamed.iso", check=True)
    alice.run("get", "/c/renamed.iso", str(out), check=True)
    assert out.read_bytes() == edited


def test_empty_and_executable_files_round_trip(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    server = make_server("file")
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    dev = Device(tmp_path / "h", server).login("u", "pw")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.utime(script, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    dev.run("put", str(empty), "/empty", check=True)
    dev.run("put", str(script), "/bin/run.sh", check=True)
    dev.run("get", "/empty", str(tmp_path / "empty2"), check=True)
    dev.run("get", "/bin/run.sh", str(tmp_path / "run2.sh"), check=True)
    assert (tmp_path / "empty2").read_bytes() == b""
    copy = tmp_path / "run2.sh"
    assert copy.read_text() == script.read_text()
    assert os.stat(copy).st_mode & 0o100 and os.stat(copy).st_mtime_ns == 1_600_000_000_123_456_789


def test_bad_input_gets_one_clear_line_and_nonzero_exit(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    server = make_server("file")
    server.admin("user", "add", "u", "--password-stdin", stdin="right\n")
    dev = Device(tmp_path / "h", server)

    r = dev.run("ls")
    assert r.returncode == 1 and "not logged in" in r.stderr
    r = dev.run("login", server.url, "--user", "u", "--password-stdin", stdin="wrong\n")
    assert r.returncode == 1 and "wrong user name or password" in r.stderr
    r = dev.run("login", server.url, "--user", "nobody", "--password-stdin", stdin="right\n")
    assert r.returncode == 1 and "wrong user name or password" in r.stderr
    dev.login("u", "right")

    f = tmp_path / "f"
    f.write_bytes(b"x")
    for bad in ["/a/../b", "/a//b", "relative", "/" + "n" * 256, "/a/./b"]:
        r = dev.run("put", str(f), bad)
        assert r.returncode == 1 and "invalid path" in r.stderr, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    r = dev.run("get", "/missing", str(tmp_path / "out"))
    assert r.returncode == 1 and "no such file" in r.stderr and not (tmp_path / "out").exists()
    r = dev.run("put", str(tmp_path / "nope"), "/x")
    assert r.returncode == 1 and "No such file" in r.stderr
    dev.run("mkdir", "/folder", check=True)
    r = dev.run("get", "/folder", str(tmp_path / "out"))
    assert r.returncode == 1 and "folder" in r.stderr
    r = dev.run("mv", "/folder", "/folder/inside")
    assert r.returncode == 1 and "into itself" in r.stderr
    assert as_json(dev.run("ls", "--json")) == [json.loads(dev.run("ls", "--json").stdout)[0]]

    offline = Device(tmp_path / "h2", server)
    offline.home.mkdir()
    creds = json.loads((dev.home / "credentials.json").read_text())
    creds["server"] = f"http://127.0.0.1:{free_port()}"
    (offline.home / "credentials.json").write_text(json.dumps(creds))
    r = offline.run("ls", "--retry-for", "1")
    assert r.returncode == 3 and "cannot reach the server" in r.stderr


def test_revoked_device_is_refused(make_server: Callable[..., FerryServer], tmp_path: Path) -> None:
    server = make_server("file")
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    dev = Device(tmp_path / "h", server).login("u", "pw")
    dev.run("ls", check=True)
    device_id = json.loads((dev.home / "credentials.json").read_text())["device_id"]
    assert server.admin("device", "revoke", str(device_id)).returncode == 0
    r = dev.run("ls")
    assert r.returncode == 1 and "revoked" in r.stderr


def test_logout_revokes_this_device_only_and_forgets_its_credentials(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    server = make_server("file")
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    laptop = Device(tmp_path / "laptop", server).login("u", "pw", "laptop")
    phone = Device(tmp_path / "phone", server).login("u", "pw", "phone")
    saved = (laptop.home / "credentials.json").read_text()
    device_id = json.loads(saved)["device_id"]

    # the server unreachable: nothing changes, and the user is told so
    away = Device(tmp_path / "away", server)
    away.home.mkdir()
    creds = json.loads(saved)
    creds["server"] = f"http://127.0.0.1:{free_port()}"
    (away.home / "credentials.json").write_text(json.dumps(creds))
    r = away.run("logout")
    assert r.returncode == 3 and "still logged in" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (away.home / "credentials.json").exists()
    laptop.run("ls", check=True)

    r = laptop.run("logout")
    assert r.returncode == 0 and f"(id {device_id})" in r.stdout, r.stderr
    assert not (laptop.home / "credentials.json").exists()
    r = laptop.run("ls")
    assert r.returncode == 1 and "not logged in" in r.stderr
    # the token itself no longer works, anywhere
    stolen = Device(tmp_path / "stolen", server)
    stolen.home.mkdir()
    (stolen.home / "credentials.json").write_text(saved)
    r = stolen.run("ls")
    assert r.returncode == 1 and "revoked" in r.stderr
    r = stolen.run("logout")  # already revoked: the local copy is still forgotten
    assert r.returncode == 0 and "already been revoked" in r.stdout
    assert not (stolen.home / "credentials.json").exists()
    phone.run("ls", check=True)  # the user's other devices go on
    devices = [json.loads(line) for line in server.admin("device", "list", "u").stdout.splitlines()]
    assert {d["name"]: d["revoked_at"] is not None for d in devices} == {"laptop": True, "phone": False}


def test_s3_down_gives_clear_error_and_server_keeps_serving(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = FerryServer(
        tmp_path / "srv", make_server("file").database_url, "s3://nowhere", dead, port=free_port()
    )
    server.start()
    try:
        server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
        dev = Device(tmp_path / "h", server).login("u", "pw")
        f = tmp_path / "f"
        random_file(f, 300_000)
        r = dev.run("put", str(f), "/f", timeout=120)
        assert r.returncode == 1 and "unreachable" in r.stderr and dead.split("//")[1] in r.stderr
        dev.run("mkdir", "/still-works", check=True)
        assert [e["path"] for e in as_json(dev.run("ls", "--json"))] == ["/still-works"]
        with urllib.request.urlopen(server.url + "/healthz") as resp:
            assert resp.status == 200
    finally:
        server.stop()


async def _count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def test_client_killed_mid_upload_resumes_without_resending(alice: Device, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = random_file(src, 96 * 1024 * 1024, seed=7)
    db = alice.server.database_url
    proc = alice.popen("put", str(src), "/big.bin", "--json")
    while asyncio.run(_count(db, "SELECT count(*) FROM uploads")) < 8:
        assert proc.poll() is None, "the upload finished before it could be interrupted"
    proc.kill()
    proc.wait()
    assert as_json(alice.run("ls", "--json")) == []  # nothing half-visible
    assert asyncio.run(_count(db, "SELECT count(*) FROM versions")) == 0
    done = as_json(alice.run("put", str(src), "/big.bin", "--json"))
    assert done["sent"] < len(data)  # the blocks that made it were not sent again
    alice.run("get", "/big.bin", str(tmp_path / "copy"), check=True)
    assert hashlib.sha256((tmp_path / "copy").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_server_killed_mid_commit_leaves_old_or_new(
    make_server: Callable[..., FerryServer], tmp_path: Path
) -> None:
    server = make_server("file")
    server.admin("user", "add", "u", "--password-stdin", stdin="pw\n")
    dev = Device(tmp_path / "h", server).login("u", "pw")
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    old = random_file(v1, 700_000, seed=1)
    new = random_file(v2, 900_000, seed=2)
    dev.run("put", str(v1), "/doc", check=True)

    async def crash_inside_commit() -> None:
        # hold the journal so the commit transaction stops after writing its version row
        locker = await asyncpg.connect(server.database_url)
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE journal IN EXCLUSIVE MODE")
        proc = dev.popen("put", str(v2), "/doc")
        while not await locker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            assert proc.poll() is None, proc.communicate()
            await asyncio.sleep(0.01)
        server.kill()
        proc.kill()
        proc.wait()
        await tx.rollback()
        await locker.close()

    asyncio.run(crash_inside_commit())
    server.start()
    dev.run("get", "/doc", str(tmp_path / "after"), check=True)
    assert (tmp_path / "after").read_bytes() == old
    assert asyncio.run(_count(server.database_url, "SELECT count(*) FROM journal")) == 1
    dev.run("put", str(v2), "/doc", check=True)
    dev.run("get", "/doc", str(tmp_path / "after"), check=True)
    assert (tmp_path / "after").read_bytes() == new


@pytest.mark.parametrize("backend", ["file"])
def test_embedded_defaults_quick_start(tmp_path: Path, backend: str) -> None:
    server = FerryServer(tmp_path / "data", None).start(timeout=120)
    try:
        r = server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n")
        assert r.returncode == 0, r.stderr
        dev = Device(tmp_path / "h", server).login("alice", "pw")
        f = tmp_path / "f"
        data = random_file(f, 1_000_000)
        dev.run("put", str(f), "/f", check=True)
        dev.run("get", "/f", str(tmp_path / "g"), check=True)
        assert (tmp_path / "g").read_bytes() == data
        assert (tmp_path / "data" / "pg" / "PG_VERSION").exists()
        assert any((tmp_path / "data" / "blocks").rglob("*" * 1))
    finally:
        server.stop()
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists()  # embedded PostgreSQL stopped with it
