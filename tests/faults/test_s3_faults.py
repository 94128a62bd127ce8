"""The S3 block store behind a fault-injecting proxy (tests/support/faultproxy.py)
in front of moto's S3 server: PUTs answered 500 or 503, connections reset
mid-body, answers held back. No commit is acknowledged before its blocks are
stored (read back from moto directly, past the proxy), a failed upload is a
clear error that loses nothing, and once S3 is well again the upload resumes,
sending only the blocks S3 does not have yet."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from protocol.chunking import chunk_bytes
from tests.support.crash import check_server, s3_blocks
from tests.support.faultproxy import FaultProxy
from tests.support.servers import Device, FerryServer


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(int(s3_endpoint.rsplit(":", 1)[1]), http_methods=("PUT",)).start(http=True)
    yield proxy
    proxy.stop()


@pytest.fixture
def setup(
    s3: FaultProxy, s3_endpoint: str, database_url: str, tmp_path: Path
) -> Iterator[tuple[FerryServer, Device, FaultProxy, str]]:
    bucket = "faults-" + tmp_path.name[-20:].lower().replace("_", "-")
    server = FerryServer(tmp_path / "server", database_url, f"s3://{bucket}", f"http://127.0.0.1:{s3.port}")
    server.start()
    try:
        assert server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
        device = Device(tmp_path / "home", server).login("alice", "pw")
        yield server, device, s3, bucket
    finally:
        server.stop()


def _file(tmp_path: Path, name: str, size: int, seed: int) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


async def _stored(database_url: str) -> set[bytes]:
    conn = await asyncpg.connect(database_url)
    try:
        return {bytes(r["hash"]) for r in await conn.fetch("SELECT hash FROM blocks")}
    finally:
        await conn.close()


def test_s3_faults(
    setup: tuple[FerryServer, Device, FaultProxy, str], s3_endpoint: str, database_url: str, tmp_path: Path
) -> None:
    """One server through three kinds of S3 trouble (a server start each would triple the time)."""
    _server, device, s3, bucket = setup
    read_block = s3_blocks(s3_endpoint, bucket)

    # 1. S3 fails every attempt at some PUTs (botocore tries 3 times): a clear error, nothing committed
    src, data = _file(tmp_path, "big.bin", 6_000_000, 1)
    s3.http_faults = ["pass"] * 2 + ["503", "500"] * 500  # the first two PUTs get through
    r = device.run("put", str(src), "/big.bin", "-q")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "block store" in r.stderr and "unreachable" in r.stderr, r.stderr  # says what is wrong
    assert device.run("ls", "/").stdout.strip() == ""
    assert check_server(database_url, read_block, {}) == []
    stored = asyncio.run(_stored(database_url))
    blocks = {b.hash: b.length for b in chunk_bytes(data)}
    assert 0 < len(stored & set(blocks)) < len(blocks)  # some blocks made it before S3 failed
    failed_phase = s3.http_injected

    # ... and once S3 is well again the upload resumes: only the blocks S3 lacks are sent
    s3.http_faults = []
    r = device.run("put", str(src), "/big.bin", "--json", check=True)
    assert json.loads(r.stdout)["sent"] == sum(size for h, size in blocks.items() if h not in stored)
    out = tmp_path / "back.bin"
    device.run("get", "/big.bin", str(out), "-q", check=True)
    assert out.read_bytes() == data

    # 2. errors and connection resets mid-body, never three in a row for one PUT: retried unseen
    src, data = _file(tmp_path, "f.bin", 3_000_000, 2)
    s3.http_faults = ["503", "reset", "500", "pass", "reset", "503"]
    device.run("put", str(src), "/f.bin", "-q", check=True)
    assert s3.http_injected == failed_phase + 5
    device.run("get", "/f.bin", str(out), "-q", check=True)
    assert out.read_bytes() == data

    # 3. S3 answers slowly: the server serves others meanwhile, and acknowledges nothing early
    src, _ = _file(tmp_path, "slow.bin", 300_000, 3)
    seen = s3.http_seen
    s3.http_faults = ["slow:3"]
    upload = device.popen("put", str(src), "/slow.bin", "-q")
    deadline = time.monotonic() + 10
    while s3.http_seen == seen:  # the block is on its way to S3, whose answer is held back
        assert time.monotonic() < deadline
        time.sleep(0.02)
    listing = device.run("ls", "/")
    assert listing.returncode == 0 and upload.poll() is None
    assert "slow.bin" not in listing.stdout  # not acknowledged before S3 has the block
    _, err = upload.communicate(timeout=60)
    assert upload.returncode == 0, err
    assert check_server(database_url, read_block, {}) == []
    print(f"S3 faults injected: {s3.http_injected} in {s3.http_seen} PUTs")
