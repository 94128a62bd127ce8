"""A live-server fuzzer: many connections send random and mutated frames
(seeded, see tests/support/wirefuzz.py) to a real `ferry server` while a real
`ferry sync` client of another user keeps syncing both ways.

Checked throughout: every frame gets its one reply (or the connection is
closed); replies later than 1 s (the aim) are counted and printed, and one
later than ``FERRY_FUZZ_HANG_SECONDS`` (default 5: a hang, not a slow
machine) fails the test; no reply is an internal error; the server's
RSS stays bounded; the client's files reach the server and the server's
files reach the client. ``FERRY_FUZZ_SECONDS`` (default 15) and
``FERRY_FUZZ_SEED`` (default 1) set the campaign; results go to stdout
(run with ``-s``) for RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
from websockets.exceptions import ConnectionClosed

from protocol import framing
from protocol import messages as m
from tests.e2e.test_wire import TIMEOUT, add_user, login, nid, recv, session, stat, upload_and_commit
from tests.support.servers import Device, FerryServer, drop
from tests.support.wirefuzz import FrameFuzzer

SECONDS = float(os.environ.get("FERRY_FUZZ_SECONDS", "15"))
SEED = int(os.environ.get("FERRY_FUZZ_SEED", "1"))
CONNECTIONS = 12
REPLY_AIM = 1.0  # the requirement: replies over this are counted and printed
HANG = float(os.environ.get("FERRY_FUZZ_HANG_SECONDS", "5"))  # a reply this late fails the test
# The server's own bounds: two Argon2 hashes at once (64 MiB each: link
# passwords), the 32 MiB block cache, in-flight requests and replies; the
# campaigns plateau at ~210 MiB of growth (90 s and 120 s alike)
RSS_GROWTH_MIB = 320


def expected_reply_id(frame: str | bytes) -> int | None:
    """The id the server's reply to ``frame`` must carry (None: unreadable)."""
    if isinstance(frame, bytes):
        if len(frame) < framing.HEADER_SIZE or frame[0] not in (framing.KIND_PUT, framing.KIND_DATA):
            return None
        return int.from_bytes(frame[4:8], "big")
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or type(body.get("id")) is not int or not -(2**63) <= body["id"] < 2**63:
        return None
    cls = m.BY_TYPE.get(body["type"]) if isinstance(body.get("type"), str) else None
    if cls is not None and "id" not in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        try:
            framing.decode(frame)
        except Exception:
            return body["id"]  # refused while decoding: the error names the id it read
        return None  # a well-formed message without an id (hello, welcome, changed, ...)
    return int(body["id"])


class Stats:
    def __init__(self) -> None:
        self.frames = 0
        self.codes: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[int] = collections.Counter()
        self.slowest = 0.0
        self.late: list[tuple[float, str]] = []
        self.bad: list[str] = []


async def fuzz_connection(srv: FerryServer, token: str, seed: int, until: float, stats: Stats) -> None:
    fuzzer = FrameFuzzer(seed, max_block=4 * 1024 * 1024)
    while time.monotonic() < until:
        ws = await session(srv, token)
        try:
            while time.monotonic() < until:
                frame = fuzzer.frame()
                want = expected_reply_id(frame)
                sent = time.monotonic()
                await ws.send(frame)
                stats.frames += 1
                while True:
                    reply = await recv(ws, timeout=TIMEOUT)
                    if not isinstance(reply, m.Changed | m.NamespacesChanged):
                        break
                took = time.monotonic() - sent
                stats.slowest = max(stats.slowest, took)
                if took > REPLY_AIM:
                    stats.late.append((took, str(frame)[:200]))
                code = reply.code if isinstance(reply, m.Error) else type(reply).__name__
                stats.codes[code] += 1
                if code in ("internal", "unavailable") or getattr(reply, "id", None) != want:
                    stats.bad.append(f"{reply!r:.300} for {str(frame)[:300]}")
        except ConnectionClosed as e:
            stats.closes[e.rcvd.code if e.rcvd else 1006] += 1
        finally:
            drop(ws.transport)


async def keep_syncing(srv: FerryServer, folder: Path, token: str, until: float) -> int:
    """Both directions, over and over: a file written into the client's folder
    reaches the server; a file committed on the server reaches the folder."""
    rounds = 0
    async with await session(srv, token) as ws:
        while time.monotonic() < until:
            rounds += 1
            local = folder / f"local-{rounds}.txt"
            local.write_bytes(b"written on disk %d" % rounds)
            old = time.time() - 5  # settled, as an editor's save a moment ago
            os.utime(local, (old, old))
            await upload_and_commit(ws, f"/remote-{rounds}.txt", b"committed on the server %d" % rounds)
            deadline = time.monotonic() + 60
            while not (
                isinstance(await stat(ws, f"/local-{rounds}.txt"), m.EntryReply)
                and (folder / f"remote-{rounds}.txt").exists()
            ):
                assert time.monotonic() < deadline, f"round {rounds} did not sync both ways in 60 s"
                await asyncio.sleep(0.1)
    return rounds


async def test_live_fuzz(make_server: Callable[..., FerryServer], tmp_path: Path) -> None:
    srv = make_server("file")
    await add_user(srv, "alice")
    await add_user(srv, "mallory")
    client = await asyncio.to_thread(lambda: Device(tmp_path / "alice-home", srv).login("alice", "pw"))
    folder = tmp_path / "alice-folder"
    folder.mkdir()
    syncing = client.popen("sync", str(folder))
    checker = (await login(srv, "alice", device="checker"))["token"]
    tokens = [(await login(srv, "mallory", device=f"fuzz{i}"))["token"] for i in range(CONNECTIONS)]
    assert srv.proc is not None
    server = psutil.Process(srv.proc.pid)
    try:
        rss_before, peak = server.memory_info().rss, 0
        until = time.monotonic() + SECONDS
        stats = Stats()
        async with asyncio.TaskGroup() as group:  # one failing cancels the rest
            for i, token in enumerate(tokens):
                group.create_task(fuzz_connection(srv, token, SEED * 1000 + i, until, stats))
            syncer = group.create_task(keep_syncing(srv, folder, checker, until))
            while time.monotonic() < until:
                peak = max(peak, server.memory_info().rss)
                await asyncio.sleep(0.25)
        rounds = syncer.result()
    finally:
        syncing.terminate()
        syncing.wait(30)
    grown = (peak - rss_before) / 2**20
    print(
        f"\nfuzz seed {SEED}, {SECONDS:g}s, {CONNECTIONS} connections: {stats.frames} frames, "
        f"slowest reply {stats.slowest:.3f}s, {len(stats.late)} over {REPLY_AIM:g}s {stats.late[:3]}, "
        f"RSS {rss_before / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB, {rounds} sync rounds both ways, "
        f"closes {dict(stats.closes)}, replies {dict(stats.codes.most_common())}"
    )
    assert not stats.bad, "\n".join(stats.bad[:20])
    assert stats.slowest < HANG, f"a reply took {stats.slowest:.1f}s: {max(stats.late)}"
    assert grown < RSS_GROWTH_MIB, f"server RSS grew {grown:.0f} MiB"
    assert rounds >= 1 and stats.frames > 100
    assert syncing.returncode is not None and srv.proc.poll() is None
    async with await session(srv, checker) as ws:  # still serving
        assert isinstance(await asyncio.wait_for(_ping(ws), TIMEOUT), m.Pong)


async def _ping(ws: Any) -> Any:
    await ws.send(framing.encode(m.Ping(nid())))
    return await recv(ws)
