"""Both ends of a peer link: a thin driver over ``protocol.framing``'s stream
framing, like the WebSocket transport is over WebSocket frames.

The asking end (:class:`PeerLink`) sends ``hello`` with its ticket, its
certificate and a proof for this peer's certificate, checks the ``welcome``'s
ticket against the certificate TLS showed it, then sends ``get_block``
requests, many in flight. The serving end (:func:`serve_link`) checks the
hello, answers each ``get_block`` with a DATA block frame when the block is in
a namespace both tickets name, else ``not_found`` (the same answer whether or
not it holds the block), and drops the link when the asker's ticket expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from client.lan.identity import Identity, check_requester, check_ticket, client_context
from protocol import PROTOCOL_VERSIONS, framing
from protocol import messages as m
from protocol.chunking import MAX_BLOCK
from protocol.errors import ErrorCode, ProtocolError
from protocol.lan import BadTicket
from protocol.version import negotiate

log = logging.getLogger("ferry.lan")
MAX_FRAME = MAX_BLOCK + framing.HEADER_SIZE
HANDSHAKE_TIMEOUT = 5.0
PEER_NAME = "ferry-peer/0.1"
IN_FLIGHT = 8  # block requests a serving peer runs at once per link


class PeerGone(Exception):
    """The peer is unreachable, refused us, or the link dropped: ask elsewhere."""


class _Framed:
    """Frames over an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = framing.StreamDecoder(MAX_FRAME + 1024)
        self._ready: list[str | bytes] = []
        self._lock = asyncio.Lock()

    async def read(self) -> str | bytes:
        while not self._ready:
            data = await self.reader.read(1024 * 1024)
            if not data:
                raise PeerGone("peer closed the link")
            self.decoder.receive_data(data)
            self._ready = self.decoder.frames_received()
        return self._ready.pop(0)

    async def send(self, payload: m.Message | bytes) -> None:
        data = framing.encode(payload) if isinstance(payload, m.Message) else payload
        async with self._lock:
            self.writer.write(framing.stream_frame(data))
            await self.writer.drain()

    async def send_block(self, req_id: int, h: bytes, data: bytes | memoryview) -> None:
        """A DATA block frame, its bytes handed to the transport as they are."""
        head = framing.stream_block_header(framing.KIND_DATA, req_id, h, len(data))
        async with self._lock:
            self.writer.write(head)
            self.writer.write(data)
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


# --- asking end ----------------------------------------------------------------------


class PeerLink:
    def __init__(self, framed: _Framed, tags: frozenset[str], expires_s: int) -> None:
        self.framed = framed
        self.tags = tags  # namespaces (opaque tags) the peer's ticket names
        self.expires_s = expires_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.closed: str | None = None
        self._reader = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self.framed.read()
                if isinstance(frame, bytes):
                    block = framing.decode_block(frame)
                    self._resolve(block.id, block)
                else:
                    msg = framing.decode(frame)
                    self._resolve(getattr(msg, "id", None), msg)
        except (PeerGone, OSError, ProtocolError) as e:
            self.closed = str(e) or type(e).__name__
        finally:
            self.closed = self.closed or "link closed"
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(PeerGone(self.closed))
            self._pending.clear()

    def _resolve(self, req_id: int | None, value: Any) -> None:
        fut = self._pending.pop(req_id, None) if req_id is not None else None
        if fut is not None and not fut.done():
            fut.set_result(value)

    async def get_block(self, h: bytes) -> bytes | memoryview:
        """The block's bytes as the peer sent them (unchecked: the caller hashes
        them); ProtocolError(not_found) if the peer will not give it."""
        if self.closed is not None:
            raise PeerGone(self.closed)
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            await self.framed.send(m.GetBlock(req_id, h))
        except OSError as e:
            raise PeerGone(str(e)) from None
        try:
            reply = await fut
        finally:
            self._pending.pop(req_id, None)
        if isinstance(reply, m.Error):
            raise ProtocolError.received(reply.code, reply.message)
        if not isinstance(reply, framing.BlockFrame) or reply.kind != framing.KIND_DATA or reply.hash != h:
            raise PeerGone("peer answered get_block with something else")
        return reply.data

    async def close(self) -> None:
        self._reader.cancel()
        await self.framed.close()


async def open_link(host: str, port: int, me: Identity, ticket: str, server_key: str,
                    timeout: float = HANDSHAKE_TIMEOUT) -> PeerLink:  # fmt: skip
    """Connect, check the peer is a device the server vouches for, and present our ticket."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_context(), server_hostname=None), timeout
        )
    except (OSError, TimeoutError, ValueError) as e:
        raise PeerGone(f"cannot reach peer {host}:{port}: {str(e) or 'timed out'}") from None
    framed = _Framed(reader, writer)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            raise PeerGone(f"peer {host}:{port} showed no TLS certificate")
        peer_fp = hashlib.sha256(der).digest()
        hello = m.Hello(list(PROTOCOL_VERSIONS), PEER_NAME, ticket, me.cert_b64, me.prove(peer_fp))
        await framed.send(hello)
        reply = framing.decode(await asyncio.wait_for(framed.read(), timeout))
        if isinstance(reply, m.Error):
            raise PeerGone(f"peer {host}:{port} refused us: {reply.message}")
        if not isinstance(reply, m.Welcome):
            raise PeerGone(f"peer {host}:{port} answered hello with {reply.TYPE}")
        claims = check_ticket(reply.ticket, server_key, peer_fp, time.time())
    except (BadTicket, ProtocolError, OSError, TimeoutError, PeerGone) as e:
        await framed.close()
        if isinstance(e, PeerGone):
            raise
        raise PeerGone(f"peer {host}:{port}: {str(e) or 'timed out'}") from None
    return PeerLink(framed, claims.tags, claims.expires_s)


# --- serving end -------------------------------------------------------------------------


@dataclass
class Serving:
    """What the serving end needs from the device: its identity and ticket, and
    a way to read a block of one of the namespaces (opaque tags) allowed."""

    me: Identity
    ticket: Callable[[], str]  # current
    tags: Callable[[], frozenset[str]]  # this device's namespaces now
    server_key: Callable[[], str]
    read_block: Callable[[bytes, frozenset[str]], Awaitable[bytes | None]]  # bounds its own reads
    on_served: Callable[[int], None]


async def serve_link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, serving: Serving) -> None:
    framed = _Framed(reader, writer)
    tasks: set[asyncio.Task[None]] = set()
    try:
        claims = await _accept(framed, serving)
        if claims is None:
            return
        slots = asyncio.Semaphore(IN_FLIGHT)
        while True:
            frame = await asyncio.wait_for(framed.read(), 120)  # an idle asker is dropped
            if claims.expires_s <= time.time():
                await framed.send(
                    m.Error(None, ErrorCode.UNAUTHORIZED.value, "ticket expired; get a new one")
                )
                return
            await slots.acquire()  # back-pressure: stop reading while full
            allowed = claims.tags & serving.tags()
            task = asyncio.create_task(_answer(framed, frame, allowed, serving))
            tasks.add(task)
            task.add_done_callback(functools.partial(_finished, tasks, slots))
    except (PeerGone, OSError, TimeoutError, ProtocolError):
        pass
    finally:
        for t in tasks:
            t.cancel()
        await framed.close()


def _finished(tasks: set[asyncio.Task[None]], slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    slots.release()


async def _accept(framed: _Framed, serving: Serving) -> Any:
    try:
        frame = await asyncio.wait_for(framed.read(), HANDSHAKE_TIMEOUT)
        hello = framing.decode(frame) if isinstance(frame, str) else None
        if not isinstance(hello, m.Hello):
            raise ProtocolError(ErrorCode.PROTOCOL, "expected hello first")
        version = negotiate(hello.versions)
        claims = check_requester(hello.ticket, hello.cert, hello.proof, serving.server_key(),
                                 serving.me.fingerprint, time.time())  # fmt: skip
    except BadTicket as e:
        await framed.send(m.Error(None, ErrorCode.UNAUTHORIZED.value, f"not vouched for by the server: {e}"))
        return None
    except ProtocolError as e:
        await framed.send(framing.error_for(None, e))
        return None
    welcome = m.Welcome(version, PEER_NAME, "", 0, MAX_FRAME, IN_FLIGHT, MAX_BLOCK, [], serving.ticket())
    await framed.send(welcome)
    return claims


async def _answer(framed: _Framed, frame: str | bytes, allowed: frozenset[str], serving: Serving) -> None:
    req_id: int | None = None
    try:
        msg = framing.decode(frame) if isinstance(frame, str) else None
        req_id = getattr(msg, "id", None)
        if isinstance(msg, m.Ping):
            await framed.send(m.Pong(msg.id))
            return
        if not isinstance(msg, m.GetBlock):
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "a peer only answers get_block and ping")
        data = await serving.read_block(msg.hash, allowed) if allowed else None
        if data is None:  # the same answer whether it is not here or not theirs to read
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no block {msg.hash.hex()[:12]} here")
        await framed.send_block(msg.id, msg.hash, data)
        serving.on_served(len(data))
    except ProtocolError as e:
        with contextlib.suppress(Exception):
            await framed.send(framing.error_for(req_id, e))
    except (PeerGone, OSError):
        pass
