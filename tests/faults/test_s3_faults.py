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


def test_s3_errors_fail_the_upload_cleanly_and_it_resumes(
    setup: tuple[FerryServer, Device, FaultProxy, str], s3_endpoint: str, database_url: str, tmp_path: Path
) -> None:
    server, device, s3, bucket = setup
    src, data = _file(tmp_path, "big.bin", 6_000_000, 1)
    # the first few PUTs get through, then S3 fails every attempt (botocore tries 3 times)
    s3.http_faults = ["pass"] * 2 + ["503", "500"] * 40
    r = device.run("put", str(src), "/big.bin", "-q")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "block store" in r.stderr and "unreachable" in r.stderr, r.stderr  # says what is wrong
    assert device.run("ls", "/").stdout.strip() == ""  # nothing committed
    assert check_server(database_url, s3_blocks(s3_endpoint, bucket), {}) == []
    stored = asyncio.run(_stored(database_url))
    blocks = {b.hash: b.length for b in chunk_bytes(data)}
    assert 0 < len(stored & set(blocks)) < len(blocks)  # some blocks made it before S3 failed

    s3.http_faults = []  # S3 is well again
    r = device.run("put", str(src), "/big.bin", "--json", check=True)
    lacking = sum(size for h, size in blocks.items() if h not in stored)
    assert json.loads(r.stdout)["sent"] == lacking  # only the blocks S3 did not have
    out = tmp_path / "back.bin"
    device.run("get", "/big.bin", str(out), "-q", check=True)
    assert out.read_bytes() == data
    assert check_server(database_url, s3_blocks(s3_endpoint, bucket), {}) == []
    print(f"S3 faults injected: {s3.http_injected} of {s3.http_seen} PUTs")


def test_s3_transient_errors_and_resets_are_retried(
    setup: tuple[FerryServer, Device, FaultProxy, str], s3_endpoint: str, database_url: str, tmp_path: Path
) -> None:
    server, device, s3, bucket = setup
    src, data = _file(tmp_path, "f.bin", 3_000_000, 2)
    s3.http_faults = ["503", "reset", "500", "pass", "reset", "503"]  # never three in a row for one PUT
    r = device.run("put", str(src), "/f.bin", "--json", check=True)
    assert json.loads(r.stdout)["size"] == len(data)
    assert s3.http_injected == 5
    out = tmp_path / "back.bin"
    device.run("get", "/f.bin", str(out), "-q", check=True)
    assert out.read_bytes() == data
    assert check_server(database_url, s3_blocks(s3_endpoint, bucket), {}) == []


def test_slow_s3_holds_up_only_its_upload(
    setup: tuple[FerryServer, Device, FaultProxy, str], s3_endpoint: str, database_url: str, tmp_path: Path
) -> None:
    server, device, s3, bucket = setup
    src, data = _file(tmp_path, "slow.bin", 300_000, 3)
    s3.http_faults = ["slow:3"]
    upload = device.popen("put", str(src), "/slow.bin", "-q")
    deadline = time.monotonic() + 10
    while s3.http_seen == 0:  # the block is on its way to S3, whose answer is held back
        assert time.monotonic() < deadline
        time.sleep(0.02)
    listing = device.run("ls", "/")  # the server answers others meanwhile
    assert listing.returncode == 0 and upload.poll() is None
    assert "slow.bin" not in listing.stdout  # not acknowledged before S3 has the block
    out, err = upload.communicate(timeout=60)
    assert upload.returncode == 0, err
    assert check_server(database_url, s3_blocks(s3_endpoint, bucket), {}) == []
