"""Resource bounds, scaled down from bench/connections.py: many idle
authenticated sessions on one `ferry server` process cost bounded memory each,
and one commit's `changed` push reaches every one of them.

The aim is 10,000 sessions under 1 GiB of RSS (about 100 KiB each, the
server's own baseline included); the bench measured 42 KiB per session. The
bound here is twice the aim, so a slow or busy machine never fails it, while
a per-session leak of a buffer or a task would.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import psutil

from protocol import messages as m
from tests.e2e.test_wire import TIMEOUT, add_user, login, recv, session, upload_and_commit
from tests.support.servers import FerryServer

SESSIONS = int(os.environ.get("FERRY_TEST_SESSIONS", "500"))
AIM_PER_SESSION = 2**30 / 10_000
BOUND_PER_SESSION = 2 * AIM_PER_SESSION


async def test_idle_sessions_cost_bounded_memory_and_all_get_the_push(
    make_server: Callable[..., FerryServer],
) -> None:
    srv = make_server("file", extra=["--max-connections-per-user", "0", "--max-connections-per-ip", "0"])
    await add_user(srv, "alice")
    tokens = [(await login(srv, "alice", device=f"d{i}"))["token"] for i in range(5)]
    assert srv.proc is not None
    server = psutil.Process(srv.proc.pid)
    rss_before = server.memory_info().rss

    gate = asyncio.Semaphore(16)

    async def open_one(i: int) -> object:
        async with gate:
            return await session(srv, tokens[i % len(tokens)], ping_interval=None)

    sessions = await asyncio.gather(*(open_one(i) for i in range(SESSIONS)))
    rss_open = server.memory_info().rss
    per_session = (rss_open - rss_before) / SESSIONS

    async with await session(srv, tokens[0]) as writer:
        committed = await upload_and_commit(writer, "/hello.txt", b"to everyone")

        async def pushed(ws: object) -> None:
            deadline = time.monotonic() + 60
            while True:
                reply = await recv(ws, timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[arg-type]
                if isinstance(reply, m.Changed) and reply.seq >= committed.seq:
                    return

        await asyncio.wait_for(asyncio.gather(*(pushed(ws) for ws in sessions)), 60 + TIMEOUT)
    print(
        f"\n{SESSIONS} sessions: RSS {rss_before / 2**20:.0f} -> {rss_open / 2**20:.0f} MiB, "
        f"{per_session / 1024:.1f} KiB per session (bound {BOUND_PER_SESSION / 1024:.0f} KiB); all got the push"
    )
    assert per_session < BOUND_PER_SESSION
    for ws in sessions:
        ws.transport.abort()  # type: ignore[attr-defined]
