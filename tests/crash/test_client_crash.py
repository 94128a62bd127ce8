"""Clients SIGKILLed at named failpoints and at random instants: one device
uploading (mid-upload, after a commit but before recording it, inside a state
transaction), another downloading (after some blocks are staged, between
staging and rename, between rename and the state update, inside a state
transaction). Right after each kill, no file at a final path is partial or
mixed (each is exactly some content written there); the device run again
resumes and sends only the blocks the server lacks (bytes counted by a proxy
in front of the server); then both folders and the server hold exactly the
latest writes, no acknowledged commit is lost and none was applied twice.

``FERRY_CRASH_POINTS=N`` runs N kill points (default 64); ``FERRY_CRASH_SEED``
picks the schedule (default 1).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg

from protocol.chunking import chunk_bytes
from tests.support.crash import Oracle, check_server, digest_of, file_blocks, server_tree, synced_versions
from tests.support.faultproxy import FaultProxy
from tests.support.servers import Device, FerryServer

KILL_POINTS = int(os.environ.get("FERRY_CRASH_POINTS") or 64)
SEED = int(os.environ.get("FERRY_CRASH_SEED", "1"))
UPLOADER = ["client.upload.block", "client.upload.committed", "client.state.tx", "random"]
DOWNLOADER = ["client.download.block", "client.download.staged", "client.download.placed", "client.state.tx",
              "random"]  # fmt: skip
# what a resumed upload may send besides the missing blocks: hello, listings,
# block queries and commits (hashes in hex), frame headers
OVERHEAD = 24_000
OVERHEAD_PER_BLOCK = 400


def _sync(device: Device, root: Path, point: str, count: int, rng: random.Random) -> int:
    """One ``ferry sync --once`` with ``point`` armed (``random``: killed at a
    random instant); its exit code (-9: killed)."""
    device.env = {"FERRY_FAILPOINT": f"{point}:{count}"} if point != "random" else {}
    try:
        proc = device.popen("sync", str(root), "--once")
        if point == "random":
            try:
                proc.wait(rng.uniform(0.1, 0.5))
            except subprocess.TimeoutExpired:
                proc.kill()
        out, err = proc.communicate(timeout=120)
    finally:
        device.env = {}
    assert proc.returncode in (0, -9), f"sync failed ({proc.returncode}): {out}\n{err}"
    return proc.returncode


def _count(point: str, rng: random.Random) -> int:
    """Which pass of ``point`` to die at: one a sync of a few files reaches."""
    return rng.randint(1, 4) if point == "client.state.tx" else rng.randint(1, 2)


def _settle(device: Device, root: Path) -> None:
    """``ferry sync --once`` to the end (a process prepared beforehand: see ``Device.prepare``)."""
    proc = device.popen("sync", str(root), "--once")
    out, err = proc.communicate(timeout=120)
    device.prepare("sync", str(root), "--once")
    assert proc.returncode == 0, f"sync after the kill failed ({proc.returncode}): {out}\n{err}"


async def _stored(database_url: str) -> set[bytes]:
    conn = await asyncpg.connect(database_url)
    try:
        return {bytes(r["hash"]) for r in await conn.fetch("SELECT hash FROM blocks")}
    finally:
        await conn.close()


def _pending(root: Path, database_url: str) -> tuple[int, int, int]:
    """For the files in ``root`` whose content the server's tree does not have
    yet: (bytes of their blocks the server lacks, bytes of those it holds
    already — a client that started over would send them again, number of blocks)."""
    stored, tree = asyncio.run(_stored(database_url)), server_tree(database_url)
    lacks = has = count = 0
    for path in root.rglob("*"):
        name = "/" + str(path.relative_to(root))
        if not path.is_file() or path.name.startswith(".ferry"):
            continue
        data = path.read_bytes()
        if tree.get(name) == digest_of(data):
            continue
        for h, size in {b.hash: b.length for b in chunk_bytes(data)}.items():
            count += 1
            if h in stored:
                has += size
            else:
                lacks += size
    return lacks, has, count


def test_clients_killed_at_failpoints_and_random_instants(
    make_server: Callable[..., FerryServer], database_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    server = make_server("file")
    assert server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n").returncode == 0
    proxy = FaultProxy(server.port).start()
    try:
        writer = Device(tmp_path / "writer", server)
        writer.run("login", f"http://127.0.0.1:{proxy.port}", "--user", "alice", "--password-stdin",
                   "--device", "writer", stdin="pw\n", check=True)  # fmt: skip
        reader = Device(tmp_path / "reader", server).login("alice", "pw", "reader")
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir()
        oracle = Oracle(a, rng)
        ups, downs = itertools.cycle(UPLOADER), itertools.cycle(DOWNLOADER)
        kills: list[str] = []
        acked: dict[int, bytes | None] = {}
        resumed = {"kills": 0, "had": 0, "lacked": 0, "sent": 0}
        cycle = 0
        while len(kills) < KILL_POINTS:
            cycle += 1
            context = f"seed {SEED}, cycle {cycle}, kill points so far {len(kills)}"
            for _ in range(rng.randint(1, 3)):
                path = f"/d{rng.randint(0, 2)}/f{rng.randint(0, 7)}.bin"
                oracle.write(path, rng.choice([rng.randint(0, 30_000), rng.randint(1_000_000, 3_000_000)]))
            if len(oracle.latest) > 4 and rng.random() < 0.2:
                oracle.delete(rng.choice(sorted(oracle.latest)))

            point = next(ups)
            if _sync(writer, a, point, _count(point, rng), rng) == -9:
                kills.append(f"writer {point}")
                assert not oracle.disk_problems(a), context  # the writer's own files untouched
                lacks, has, blocks = _pending(a, database_url)
                before = proxy.up
                _settle(writer, a)
                sent = proxy.up - before
                assert sent <= lacks + OVERHEAD + OVERHEAD_PER_BLOCK * blocks, (
                    f"{context}: resumed upload sent {sent} bytes; the server lacked {lacks} and had {has}"
                )
                resumed["kills"] += 1
                resumed["had"] += has
                resumed["lacked"] += lacks
                resumed["sent"] += sent
            point = next(downs)
            if _sync(reader, b, point, _count(point, rng), rng) == -9:
                kills.append(f"reader {point}")
                problems = oracle.disk_problems(b)
                assert not problems, f"{context}, right after the kill:\n" + "\n".join(problems)
                _settle(reader, b)
            for device, root in ((writer, a), (reader, b)):
                for version, digest in synced_versions(device.home, root).values():
                    acked[version] = digest
            problems = check_server(database_url, file_blocks(server.data_dir / "blocks"), acked)
            problems += [f"writer {p}" for p in oracle.converged(a)] + [
                f"reader {p}" for p in oracle.converged(b)
            ]
            tree = server_tree(database_url)
            problems += [
                f"server {p}: not the latest write" for p, d in tree.items() if oracle.latest.get(p) != d
            ]
            assert not problems, f"{context}:\n" + "\n".join(problems)
        print(f"client kill points: {len(kills)} in {cycle} cycles (seed {SEED}): "
              + ", ".join(f"{p} x{kills.count(p)}" for p in sorted(set(kills))))  # fmt: skip
        print(f"resumed uploads: {resumed}")
    finally:
        proxy.stop()
        writer.discard()
        reader.discard()
