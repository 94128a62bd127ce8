"""Regression: GC SIGKILLed after deleting a block's object but before deleting
its row (found by the server crash campaign). The row stayed, so the server
told the next uploader of the same bytes that it held them, and the commit
referenced a block that was gone (I6)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tests.support.crash import check_server, file_blocks
from tests.support.servers import Device, FerryServer


@pytest.mark.parametrize("then", ["upload", "gc"])
def test_gc_killed_mid_sweep_loses_no_block(
    make_server: Callable[..., FerryServer], database_url: str, tmp_path: Path, then: str
) -> None:
    server = make_server("file", extra=["--gc-every", "0.2", "--gc-grace", "0.3"])
    assert server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
    device = Device(tmp_path / "home", server).login("alice", "pw")
    data = random.Random(7).randbytes(200_000)
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    # a client killed after its block was stored: nothing references it, GC takes it
    device.env = {"FERRY_FAILPOINT": "client.upload.block:1"}
    assert device.run("put", str(src), "/a.bin", "-q").returncode == -9
    device.env = {}
    server.kill()
    server.env = {"FERRY_FAILPOINT": "server.gc.delete:1"}
    server.start()
    deadline = time.monotonic() + 20
    while server.proc is not None and server.proc.poll() is None:
        assert time.monotonic() < deadline, "GC never deleted the orphaned block"
        time.sleep(0.05)
    assert server.proc is not None and server.proc.returncode == -9  # killed mid-sweep
    server.env, server.extra = {}, []  # no background GC now that would tidy up by chance
    server.start()

    if then == "gc":  # the next run settles what the killed one left: the row goes too
        r = server.admin("gc", "--gc-grace", "1h")
        assert r.returncode == 0, r.stderr
        assert asyncio.run(_rows(database_url)) == (0, 0)
    r = device.run("put", str(src), "/a.bin", "--json", check=True)
    assert json.loads(r.stdout)["sent"] == len(data)  # the server asked for the bytes again
    out = tmp_path / "back.bin"
    device.run("get", "/a.bin", str(out), "-q", check=True)
    assert out.read_bytes() == data
    assert check_server(database_url, file_blocks(server.data_dir / "blocks"), {}) == []


async def _rows(database_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM blocks"), await conn.fetchval(
            "SELECT count(*) FROM gc_doomed"
        )
    finally:
        await conn.close()
