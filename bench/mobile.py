"""The mobile SDK over loopback: time to first byte, random small reads in a
big file, and change-notification latency through the long poll.

    .venv/bin/python bench/mobile.py [--size 1GiB] [--reads 1000] [--polls 20] [--work DIR]

Starts a real `ferry server` (fresh database on the PostgreSQL at
127.0.0.1:5432 or $FERRY_TEST_DATABASE_URL, else the embedded one), uploads
one random file with ``mobile_sdk.Client.upload``, then, each with a fresh
(cold) cache:

- time to first byte: ``open`` + ``read(1)`` at the start, and ``open`` +
  reading the last KiB (what a video player does first);
- random 4 KiB reads at uniform offsets (``--cache`` bounds the SDK cache): bytes the app read against bytes
  that crossed the network (whole blocks, ~1 MiB average), and time per read;
- long-poll latency: another device commits a small file over the HTTP API;
  time from its commit reply to ``wait_for_changes`` returning.

Prints one JSON line of figures and a short table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mobile_sdk import Client
from protocol.hashing import block_hash
from server.config import parse_size
from tests.support.servers import FerryServer, admin_url, create_database, drop_database

MiB = 2**20


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 64 * MiB))
            f.write(chunk)
            left -= len(chunk)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def first_bytes(server: FerryServer, work: Path, runs: int = 5) -> dict[str, float]:
    starts, tails = [], []
    for i in range(runs):
        async with Client(server.url, work / f"ttfb-{i}") as c:
            await c.login("bench", "pw")
            t = time.perf_counter()
            f = await c.open("/big.bin")
            await f.read(1)
            starts.append(time.perf_counter() - t)
            t = time.perf_counter()
            f = await c.open("/big.bin")
            await f.pread(f.size - 1024, 1024)
            tails.append(time.perf_counter() - t)
    return {"ttfb_start_ms": ms(statistics.median(starts)), "ttfb_last_kib_ms": ms(statistics.median(tails))}


async def random_reads(
    server: FerryServer, work: Path, size: int, reads: int, cache: int
) -> dict[str, float]:
    async with Client(server.url, work / "random", cache_bytes=cache) as c:
        await c.login("bench", "pw")
        f = await c.open("/big.bin")
        before = c.stats.bytes_received
        rng, times = random.Random(1), []
        for _ in range(reads):
            offset = rng.randrange(0, size - 4096)
            t = time.perf_counter()
            assert len(await f.pread(offset, 4096)) == 4096
            times.append(time.perf_counter() - t)
        fetched = c.stats.bytes_received - before
        return {
            "random_reads": reads,
            "random_bytes_read": reads * 4096,
            "random_bytes_fetched": fetched,
            "random_blocks_fetched": c.stats.blocks_fetched,
            "random_read_p50_ms": ms(statistics.median(times)),
            "random_read_p99_ms": ms(sorted(times)[int(len(times) * 0.99) - 1]),
        }


async def poll_latency(server: FerryServer, work: Path, polls: int) -> dict[str, float]:
    async with Client(server.url, work / "poll") as phone, httpx.AsyncClient(trust_env=False) as http:
        await phone.login("bench", "pw")
        r = await http.post(
            f"{server.url}/api/v1/login", json={"user": "bench", "password": "pw", "device": "laptop"}
        )
        laptop = {"Authorization": f"Bearer {r.json()['token']}"}
        latencies = []
        for i in range(polls):
            await phone.changes()
            waiting = asyncio.create_task(phone.wait_for_changes(timeout=30))
            await asyncio.sleep(0.2)  # parked on the server
            data = f"note {i}".encode()
            h = block_hash(data).hex()
            await http.put(f"{server.url}/api/v1/blocks/{h}", content=data, headers=laptop)
            body = {
                "path": f"/notes/{i}.txt",
                "parent": None,
                "size": len(data),
                "mtime_ns": 0,
                "blocks": [h],
            }
            await http.post(
                f"{server.url}/api/v1/commit",
                json=body,
                headers={**laptop, "Idempotency-Key": uuid.uuid4().hex},
            )
            committed = time.perf_counter()
            assert await waiting
            latencies.append(time.perf_counter() - committed)
        return {"poll_p50_ms": ms(statistics.median(latencies)), "poll_max_ms": ms(max(latencies))}


async def run(server: FerryServer, work: Path, args: argparse.Namespace) -> dict[str, object]:
    src = work / "big.bin"
    make_file(src, args.size)
    async with Client(server.url, work / "uploader") as c:
        await c.login("bench", "pw")
        t = time.perf_counter()
        await c.upload(src, "/big.bin")
        upload_s = time.perf_counter() - t
    figures: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "size_bytes": args.size,
        "cache_bytes": args.cache,
        "upload_MBps": round(args.size / upload_s / 1e6),
    }
    figures |= await first_bytes(server, work)
    figures |= await random_reads(server, work, args.size, args.reads, args.cache)
    figures |= await poll_latency(server, work, args.polls)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    p.add_argument("--reads", type=int, default=1000)
    p.add_argument(
        "--cache", type=parse_size, default=parse_size("256MiB"), help="SDK cache bound for the random reads"
    )
    p.add_argument("--polls", type=int, default=20)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir under /tmp)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-mobile-", dir=args.work))
    admin = admin_url(work)
    db = create_database(admin)
    server = FerryServer(work / "server", db).start()
    try:
        server.admin("user", "add", "bench", "--password-stdin", stdin="pw\n")
        f = asyncio.run(run(server, work, args))
        print(json.dumps(f))
        print(f"\n{args.size / 2**30:.2f} GiB file, uploaded with the SDK at {f['upload_MBps']} MB/s")
        print(
            f"  time to first byte: start {f['ttfb_start_ms']} ms, last KiB {f['ttfb_last_kib_ms']} ms (cold cache)"
        )
        ratio = int(f["random_bytes_fetched"]) / int(f["random_bytes_read"])  # type: ignore[call-overload]
        print(f"  {f['random_reads']} random 4 KiB reads: read {f['random_bytes_read']} B, fetched"
              f" {f['random_bytes_fetched']} B ({ratio:.0f}x) in {f['random_blocks_fetched']} blocks;"
              f" p50 {f['random_read_p50_ms']} ms, p99 {f['random_read_p99_ms']} ms")  # fmt: skip
        print(f"  long-poll notification: p50 {f['poll_p50_ms']} ms, max {f['poll_max_ms']} ms")
    finally:
        server.stop()
        drop_database(admin, db)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
