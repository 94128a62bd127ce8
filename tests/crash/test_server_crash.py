"""The server SIGKILLed at named failpoints and at random instants while a real
client syncs, restarted, and the client run again: after each kill, no
acknowledged commit is lost, every referenced or listed block is stored whole,
no commit was applied twice, and the client's folder and the server's tree are
exactly the latest writes (I3, I6).

``FERRY_CRASH_POINTS=N`` runs N kill points (default 36: two thirds with
the file block store, a third with S3); ``FERRY_CRASH_SEED``
picks the schedule (default 1). A failure names the seed and kill point.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.crash import (
    Oracle,
    check_server,
    digest_of,
    file_blocks,
    s3_blocks,
    server_tree,
    synced_versions,
)
from tests.support.servers import Device, FerryServer

KILL_POINTS = int(os.environ.get("FERRY_CRASH_POINTS") or 36)
SEED = int(os.environ.get("FERRY_CRASH_SEED", "1"))
POINTS = [
    "server.block.tmp",  # block bytes in a temp file, not yet renamed to their name
    "server.block.stored",  # block durable in the store, not yet in the database
    "server.block.recorded",  # block recorded, its upload not yet acknowledged
    "server.commit.before",  # commit transaction written, COMMIT not yet sent
    "server.commit.after",  # committed, the client not yet told
    "server.gc.delete",  # GC deleted a block's object, its row not yet
    "random",  # SIGKILL at a random instant of the client's sync
]
GC = ["--gc-every", "0.2", "--gc-grace", "0.5"]


class Campaign:
    """One server that keeps being killed and restarted, one client that keeps syncing."""

    def __init__(self, server: FerryServer, device: Device, root: Path, rng: random.Random,
                 next_point: Callable[[], str]) -> None:  # fmt: skip
        self.server, self.device, self.root, self.rng = server, device, root, rng
        self.next_point = next_point
        self._next = "none"
        self.kills: list[str] = []
        self.armed = "none"
        self.idle = 0  # syncs the server has lived through since it was armed
        self.acked: dict[int, bytes | None] = {}

    def arm(self) -> None:
        """Restart the server (it is dead) with ``point`` armed for a pass 1-3
        passes away (``random``: none; the test kills it). The process was
        prepared while the last one ran: see ``FerryServer.prepare``."""
        while True:
            if self.server.warm is None:
                self._prepare(self.next_point())
            self.armed, self.idle = self._next, 0
            try:
                self.server.start()
                break
            except RuntimeError:
                # a client retrying meanwhile reached the armed point before the health check
                # did (a commit as soon as the port opened): that is a kill like any other
                if self.server.proc is None or self.server.proc.poll() != -9:
                    raise
                self.kills.append(self.armed)
        self._prepare(self.next_point())

    def _prepare(self, point: str) -> None:
        count = 1 if point == "server.gc.delete" else self.rng.randint(1, 3)
        self.server.env = {"FERRY_FAILPOINT": f"{point}:{count}"} if point != "random" else {}
        self.server.prepare()
        self._next = point

    def _restart_if_dead(self) -> None:
        assert self.server.proc is not None
        code = self.server.proc.poll()
        if code is None:
            return
        assert code == -9, f"server exited with {code} (not killed):\n{self.server.log()[-3000:]}"
        self.kills.append(self.armed)
        self.arm()

    def sync(self) -> None:
        """``ferry sync --once`` until it succeeds, restarting the server whenever it dies."""
        for _attempt in range(6):
            started = time.monotonic()
            # a point not reached in two syncs (none to pass: no garbage, S3): kill it anyway
            kill_at = (
                started + self.rng.uniform(0.05, 0.6) if self.armed == "random" or self.idle >= 2 else None
            )
            client = self.device.popen("sync", str(self.root), "--once")
            self.device.prepare("sync", str(self.root), "--once")
            while client.poll() is None:
                if kill_at is not None and time.monotonic() > kill_at:
                    self.armed = "random"
                    self.server.kill()
                    kill_at = None
                self._restart_if_dead()
                time.sleep(0.01)
            self._restart_if_dead()
            out, err = client.communicate()
            if client.returncode == 0:
                self.idle += 1
                return
        raise AssertionError(f"sync never succeeded: {out}\n{err}")

    def orphan_blocks(self, size: int) -> Path:
        """A file whose upload dies after its first block was stored (a client
        SIGKILLed mid-upload): food for GC. Returns it, to be synced later."""
        path = self.root.parent / f"orphan-{self.rng.randbytes(6).hex()}.bin"
        path.write_bytes(self.rng.randbytes(size))
        self.device.env = {"FERRY_FAILPOINT": "client.upload.block:1"}
        try:
            r = self.device.run("put", str(path), f"/{path.name}", "-q")
        finally:
            self.device.env = {}
        assert r.returncode == -9, r.stderr
        return path


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_server_killed_at_failpoints_and_random_instants(
    make_server: Callable[..., FerryServer], database_url: str, tmp_path: Path, backend: str
) -> None:
    rng = random.Random(SEED)
    points = KILL_POINTS * 2 // 3 if backend == "file" else KILL_POINTS - KILL_POINTS * 2 // 3
    server = make_server(backend, extra=GC)
    r = server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n")
    assert r.returncode == 0, r.stderr
    device = Device(tmp_path / "home", server).login("alice", "pw")
    root = tmp_path / "sync"
    root.mkdir()
    oracle = Oracle(root, rng)
    schedule = [POINTS[i % len(POINTS)] for i in range(points)]
    rng.shuffle(schedule)
    campaign = Campaign(server, device, root, rng, itertools.cycle(schedule).__next__)
    server.kill()
    campaign.arm()
    if server.blocks and server.s3_endpoint:
        read_block = s3_blocks(server.s3_endpoint, server.blocks.removeprefix("s3://"))
    else:
        read_block = file_blocks(server.data_dir / "blocks")
    cycle = 0
    while len(campaign.kills) < points:
        cycle += 1
        context = (
            f"seed {SEED}, cycle {cycle}, kill points so far {len(campaign.kills)}: {campaign.kills[-3:]}"
        )
        if campaign.armed == "server.gc.delete":
            orphan = campaign.orphan_blocks(rng.randint(300_000, 1_200_000))
            deadline = time.monotonic() + 10  # grace, then the background GC collects it and dies
            while server.proc is not None and server.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            # the same content again: the server must not claim to hold blocks GC took
            (root / orphan.name).write_bytes(orphan.read_bytes())
            digest = digest_of(orphan.read_bytes())
            oracle.written.setdefault("/" + orphan.name, set()).add(digest)
            oracle.latest["/" + orphan.name] = digest
        for _ in range(rng.randint(1, 3)):
            path = f"/d{rng.randint(0, 3)}/f{rng.randint(0, 9)}.bin"
            oracle.write(path, rng.choice([rng.randint(0, 40_000), rng.randint(300_000, 1_500_000)]))
        if oracle.latest and rng.random() < 0.2:
            oracle.delete(rng.choice(sorted(oracle.latest)))
        campaign.sync()
        for version, digest in synced_versions(device.home, root).values():
            campaign.acked[version] = digest
        problems = check_server(database_url, read_block, campaign.acked)
        problems += oracle.converged(root)
        tree = server_tree(database_url)
        problems += [
            f"server {p}: not the latest write" for p, d in tree.items() if oracle.latest.get(p) != d
        ]
        problems += [f"server lacks {p}" for p in oracle.latest if p not in tree]
        assert not problems, f"{context}:\n" + "\n".join(problems)
    device.discard()
    print(f"server kill points ({backend} blocks): {len(campaign.kills)} in {cycle} cycles (seed {SEED}): "
          + ", ".join(f"{p} x{campaign.kills.count(p)}" for p in sorted(set(campaign.kills))))  # fmt: skip
