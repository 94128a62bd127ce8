"""Helpers for LAN sync tests: the server's byte counter, tickets fetched
in-process, a peer asked directly, and misbehaving peers run in a thread."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from client.home import load_credentials
from client.lan.identity import Identity
from client.lan.link import PeerGone, Serving, listen, open_link, serve_link
from client.transport import open_connection
from protocol import lan
from protocol import messages as m
from protocol.errors import ProtocolError
from tests.support.servers import Device, FerryServer

T = TypeVar("T")


def metric(server: FerryServer, name: str) -> int:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise AssertionError(f"{name} not in /metrics")


def sent(server: FerryServer) -> int:
    """Block bytes the server has sent to clients so far."""
    return metric(server, "ferry_block_bytes_sent_total")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def tickets(device: Device, me: Identity) -> m.LanTicketsReply:
    """What the server gives ``device`` for this TLS identity (as `ferry sync` asks)."""
    creds = load_credentials(device.home)
    conn = await open_connection(creds.server, creds.token)
    try:
        reply: m.LanTicketsReply = await conn.call(
            lambda i: m.LanTickets(i, me.fingerprint), m.LanTicketsReply
        )
        return reply
    finally:
        await conn.close()


async def ask(port: int, me: Identity, ticket: str, server_key: str, h: bytes) -> bytes | str:
    """Block ``h`` from the peer at 127.0.0.1:``port``, or why not (an error code or a refusal)."""
    try:
        link = await open_link("127.0.0.1", port, me, ticket, server_key, timeout=5)
    except PeerGone as e:
        return f"refused: {e}"
    try:
        return bytes(await link.get_block(h))
    except ProtocolError as e:
        return e.code.value
    except PeerGone as e:
        return f"dropped: {e}"
    finally:
        await link.close()


def forge(key_file: Path, me: Identity, tags: frozenset[str], expires_s: int) -> str:
    """A ticket signed with the server's own key (read from its data dir)."""
    from cryptography.hazmat.primitives import serialization

    key: Any = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    signed = lan.claims_bytes(lan.Claims(me.fingerprint, tags, expires_s))
    return lan.join_ticket(signed, key.sign(signed))


class LoopThread:
    """An event loop in a thread, for peers that must answer while a `ferry`
    subprocess runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def start_peer(me: Identity, reply: m.LanTicketsReply,
                     read_block: Callable[[bytes, frozenset[str], bytes], Awaitable[bytes | None]]) -> asyncio.Server:  # fmt: skip
    """A peer with a genuine ticket that answers blocks with ``read_block``."""
    serving = Serving(me, lambda: reply.ticket, lambda: frozenset(s.tag for s in reply.spaces),
                      lambda: reply.server_key, read_block, lambda n: None)  # fmt: skip
    return await listen(lambda framed: serve_link(framed, serving), 0, me.server_context(), "127.0.0.1")
