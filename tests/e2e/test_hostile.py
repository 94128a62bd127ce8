"""Hostile peers against a real `ferry server`: connection floods per user and
per address, slowloris upgrades, silent and never-reading clients, foreign
origins. Each is cut off by a bound while another client keeps syncing.

(The Dropship attack and the "is this block stored?" oracle are covered in
test_wire.py::TestCommit and test_sharing_security.py.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil
import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from websockets.exceptions import InvalidStatus

from protocol import framing
from protocol import messages as m
from tests.e2e.test_wire import (
    TIMEOUT,
    add_user,
    all_changes,
    call,
    expect_closed,
    login,
    new_user,
    nid,
    open_ws,
    recv,
    session,
    upload_and_commit,
)
from tests.support.servers import FerryServer, drop

OTHER_IP = "127.0.0.2"  # a second client address on the loopback interface


@pytest.fixture
def srv(make_server: Callable[..., FerryServer]) -> FerryServer:
    return make_server("file")


async def refused(server: FerryServer, token: str | None, **kw: Any) -> tuple[int, str]:
    """Try to connect; the HTTP status and body of the refusal."""
    with pytest.raises(InvalidStatus) as e:
        await open_ws(server, token, **kw)
    body = e.value.response.body or b""
    return e.value.response.status_code, body.decode()


async def eventually_connects(server: FerryServer, token: str, **kw: Any) -> Any:
    """A session, once the server has noticed a closed one and freed its place."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return await session(server, token, **kw)
        except InvalidStatus as e:
            assert e.response.status_code == 429 and time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def still_syncs(server: FerryServer, writer: Any, reader: Any, path: str) -> None:
    """``writer`` commits a file; ``reader`` (the same user) is told and sees it."""
    committed = await upload_and_commit(writer, path, path.encode() * 100)
    while True:  # the push for that commit (other pushes may come first)
        push = await recv(reader)
        if isinstance(push, m.Changed) and push.seq >= committed.seq:
            break
    assert path in [e.path for e in await all_changes(reader)]


async def two_devices(server: FerryServer, name: str) -> tuple[Any, Any]:
    await add_user(server, name)
    tokens = [(await login(server, name, device=d))["token"] for d in ("laptop", "phone")]
    return await session(server, tokens[0]), await session(server, tokens[1])


class TestConnectionLimits:
    async def test_sessions_per_user_are_bounded(self, make_server: Callable[..., FerryServer]) -> None:
        srv = make_server("file", extra=["--max-connections-per-user", "3", "--max-connections-per-ip", "0"])
        alice = await new_user(srv, "alice")
        held = [await session(srv, alice) for _ in range(3)]
        status, body = await refused(srv, alice)
        assert status == 429 and "too many connections for user alice (at most 3)" in body
        # the bound is per user: bob, from the same address, is not affected
        bob_laptop, bob_phone = await two_devices(srv, "bob")
        await still_syncs(srv, bob_laptop, bob_phone, "/bob.txt")
        # a closed session frees its place
        await held.pop().close()
        held.append(await eventually_connects(srv, alice))
        assert isinstance(await call(held[-1], m.Ping(nid())), m.Pong)
        for ws in [*held, bob_laptop, bob_phone]:
            await ws.close()

    async def test_sessions_per_address_are_bounded(self, make_server: Callable[..., FerryServer]) -> None:
        srv = make_server("file", extra=["--max-connections-per-ip", "4", "--max-connections-per-user", "0"])
        alice = await new_user(srv, "alice")
        held = [await session(srv, alice) for _ in range(4)]
        # counted before authentication: a flood of bad tokens is refused the same way
        for token in (alice, "fy_not-a-real-token", None):
            status, body = await refused(srv, token)
            assert status == 429 and "too many connections from 127.0.0.1 (at most 4)" in body
        # the same user from another address gets in and syncs
        laptop = await session(srv, alice, local_addr=(OTHER_IP, 0))
        phone = await session(srv, alice, local_addr=(OTHER_IP, 0))
        await still_syncs(srv, laptop, phone, "/from-elsewhere.txt")
        await held.pop().close()
        held.append(await eventually_connects(srv, alice))
        for ws in [*held, laptop, phone]:
            await ws.close()


def _server_sockets(server: FerryServer, client_port: int) -> list[Any]:
    """The server process's TCP sockets connected to our ``client_port``."""
    assert server.proc is not None
    conns = psutil.Process(server.proc.pid).net_connections(kind="tcp")
    return [c for c in conns if c.raddr and c.raddr.port == client_port]


async def wait_until_server_drops(server: FerryServer, client_port: int, within: float) -> float:
    """Seconds until the server has closed its socket to ``client_port``."""
    start = time.monotonic()
    while _server_sockets(server, client_port):
        assert time.monotonic() - start < within, f"the server still holds the connection after {within}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


class TestSlowAndSilentPeers:
    async def test_slowloris_upgrade_is_cut_off(self, make_server: Callable[..., FerryServer]) -> None:
        srv = make_server("file", extra=["--handshake-timeout", "1s"])
        laptop, phone = await two_devices(srv, "alice")
        head = f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        port = writer.get_extra_info("sockname")[1]
        start, cut = time.monotonic(), False
        for i in range(len(head)):  # a byte every 0.1 s: 6 s for the whole head, if allowed
            try:
                writer.write(head[i : i + 1])
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                cut = True
                break
        assert cut, "a byte-at-a-time upgrade was let through"
        assert time.monotonic() - start < 5  # well before the head could have been sent at that pace
        assert not _server_sockets(srv, port)
        writer.close()
        await still_syncs(srv, laptop, phone, "/during-slowloris.txt")

    async def test_upgrade_without_hello_and_silent_session_are_closed(
        self, make_server: Callable[..., FerryServer]
    ) -> None:
        srv = make_server("file", extra=["--handshake-timeout", "1s", "--idle-timeout", "2s"])
        alice = await new_user(srv, "alice")
        async with open_ws(srv, alice, ping_interval=None) as mute:  # upgraded, never says hello
            closed = await expect_closed(mute)
            assert closed.rcvd is not None and closed.rcvd.code == 1001
            assert closed.rcvd.reason == "no hello within 1s"
        silent = await session(srv, alice, ping_interval=None)  # said hello, then nothing
        closed = await expect_closed(silent)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
        assert "within 2s" in closed.rcvd.reason
        # a client that pings stays (the protocol's ping is a frame)
        live = await session(srv, alice, ping_interval=None)
        for _ in range(4):
            await asyncio.sleep(1)
            assert isinstance(await call(live, m.Ping(nid())), m.Pong)
        await live.close()


class TestNeverReadingClient:
    async def test_is_cut_off_with_bounded_memory_while_others_sync(
        self, make_server: Callable[..., FerryServer]
    ) -> None:
        srv = make_server("file", extra=["--send-timeout", "2s"])
        laptop, phone = await two_devices(srv, "alice")
        files = [
            m.FileCommit(path=f"/f{i:04}", parent=None, size=0, mtime_ns=0, blocks=[]) for i in range(400)
        ]
        batch = await call(laptop, m.CommitBatch(id=nid(), key="many", files=files))
        assert isinstance(batch, m.CommittedBatch)
        assert srv.proc is not None
        server = psutil.Process(srv.proc.pid)
        rss_before = server.memory_info().rss

        hog_token = (await login(srv, "alice", device="hog"))["token"]
        hog = await session(srv, hog_token, max_queue=1)  # reads nothing it is not asked to
        port = hog.transport.get_extra_info("sockname")[1]
        request = framing.encode(m.ListChanges(id=1, since=0))  # ~100 KB of reply each
        for _ in range(hog.welcome.max_in_flight):  # type: ignore[attr-defined]
            await hog.send(request)  # and never read a reply
        peak, start, rounds = rss_before, time.monotonic(), 0
        while _server_sockets(srv, port):
            peak = max(peak, server.memory_info().rss)
            rounds += 1
            await still_syncs(srv, laptop, phone, f"/meanwhile-{rounds}.txt")
            assert time.monotonic() - start < 30, "the client that never reads was not cut off"
            await asyncio.sleep(0.2)
        print(f"cut off after {time.monotonic() - start:.1f}s, {rounds} syncs meanwhile")
        grown = (peak - rss_before) / 2**20
        print(f"server RSS grew {grown:.1f} MiB")
        # a thousand unsent 100 KB replies would be 100 MB; the queue bound keeps it far below
        assert grown < 48, f"server memory grew {grown:.0f} MiB for one client that never reads"
        drop(hog.transport)
        await still_syncs(srv, laptop, phone, "/after.txt")


class TestOrigin:
    async def test_foreign_origin_is_refused_with_403(self, make_server: Callable[..., FerryServer]) -> None:
        srv = make_server("file", extra=["--allowed-origins", "https://app.example.com/"])
        alice = await new_user(srv, "alice")
        status, body = await refused(srv, alice, origin="https://evil.example")
        assert status == 403 and "origin https://evil.example refused" in body
        # the server's own pages, a listed origin and native clients (no Origin) get in
        for origin in (f"http://127.0.0.1:{srv.port}", "https://app.example.com", None):
            async with await session(srv, alice, origin=origin) as ws:
                assert isinstance(await call(ws, m.Ping(nid())), m.Pong)


def argon2_verify_seconds() -> float:
    """How long one wrong-password check takes on this machine, now."""
    hasher = PasswordHasher()
    stored = hasher.hash("right")
    start = time.monotonic()
    with pytest.raises(VerificationError):
        hasher.verify(stored, "wrong")
    return time.monotonic() - start


class TestLoginFlood:
    async def test_wrong_passwords_do_not_stall_other_clients(self, srv: FerryServer) -> None:
        """Each login costs an Argon2 check (~0.3 s of CPU, on purpose); run on
        the event loop, a flood of them stalled every connection."""
        laptop, phone = await two_devices(srv, "alice")
        one_check = argon2_verify_seconds()
        async with httpx.AsyncClient(trust_env=False, timeout=120) as http:
            body = {"user": "alice", "password": "guess", "device": "x"}
            flood = asyncio.gather(*(http.post(f"{srv.url}/api/v1/login", json=body) for _ in range(16)))
            slowest = 0.0
            while not flood.done():
                sent = time.monotonic()
                assert isinstance(await call(laptop, m.Ping(nid())), m.Pong)
                slowest = max(slowest, time.monotonic() - sent)
            assert [r.status_code for r in await flood] == [401] * 16
        print(f"slowest ping {slowest:.3f}s during the flood; one Argon2 check {one_check:.3f}s")
        # on the event loop, 16 checks stalled a ping 8.5 s (23 checks' time); off it, 0.14 s
        assert slowest < 3 * one_check, "the event loop waited for password checks"
        await still_syncs(srv, laptop, phone, "/after-flood.txt")
