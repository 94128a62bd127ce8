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
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from client.lan.identity import Identity, check_requester, check_ticket, client_context
from protocol import PROTOCOL_VERSIONS, framing
from protocol import messages as m
from protocol.buffers import Keeper
from protocol.chunking import MAX_BLOCK
from protocol.errors import ErrorCode, ProtocolError
from protocol.lan import BadTicket
from protocol.version import negotiate

log = logging.getLogger("ferry.lan")
MAX_FRAME = MAX_BLOCK + framing.HEADER_SIZE
HANDSHAKE_TIMEOUT = 5.0
PEER_NAME = "ferry-peer/0.1"
IN_FLIGHT = 8  # block requests a serving peer runs at once per link
# buffers blocks from peers are read into, used again once nobody holds the block (a fresh
# one costs a zero fill and a fault per page): at most 8 (32 MiB), let go after 10 s unused
BLOCK_BUFFERS = Keeper(bytearray, 8, MAX_FRAME + 1024, idle_s=10.0)


class PeerGone(Exception):
    """The peer is unreachable, refused us, or the link dropped: ask elsewhere."""


class Framed(asyncio.BufferedProtocol):
    """Frames over a TLS connection. The transport decrypts straight into the
    frame decoder's buffer (each block's payload lands in its own buffer, not
    copied through a stream buffer); reading pauses while ``QUEUED`` frames
    wait unread, and sends wait while the transport's buffer is full."""

    QUEUED = 16

    def __init__(self, on_link: Callable[[Framed], Coroutine[Any, Any, None]] | None = None) -> None:
        self.decoder = framing.StreamDecoder(MAX_FRAME + 1024, BLOCK_BUFFERS)
        self.transport: asyncio.Transport | None = None
        self._on_link = on_link  # serving end: run for the link once it is up
        self._task: asyncio.Task[None] | None = None
        self._frames: collections.deque[str | bytearray | memoryview] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._broken: Exception | None = None  # a bad frame, or the link closed
        self._reading_paused = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._lost = asyncio.get_running_loop().create_future()
        self._lock = asyncio.Lock()

    # -- asyncio.BufferedProtocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's TLS transport is not a subclass)
        if self._on_link is not None:
            self._task = asyncio.get_running_loop().create_task(self._on_link(self))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.decoder.buffer_updated(nbytes)
        except ProtocolError as e:
            self._break(e)
            if self.transport is not None:
                self.transport.abort()
            return
        frames = self.decoder.frames_received()
        if frames:
            self._frames.extend(frames)
            self._wake()
            if len(self._frames) >= self.QUEUED and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(PeerGone(str(exc) if exc else "peer closed the link"))
        self._can_write.set()
        if not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _break(self, e: Exception) -> None:
        if self._broken is None:
            self._broken = e
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- for the two ends ----------------------------------------------------------------

    def peer_cert(self) -> bytes | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        return ssl_object.getpeercert(binary_form=True) if ssl_object else None

    async def read(self) -> str | bytearray | memoryview:
        while not self._frames:
            if self._broken is not None:
                raise self._broken
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._frames.popleft()
        if self._reading_paused and len(self._frames) <= self.QUEUED // 4 and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return frame

    async def _write(self, *parts: bytes | memoryview) -> None:
        async with self._lock:
            if self._broken is not None or self.transport is None or self.transport.is_closing():
                raise PeerGone(str(self._broken or "link closed"))
            for part in parts:
                self.transport.write(part)
            await self._can_write.wait()
            if self._broken is not None:
                raise PeerGone(str(self._broken))

    async def send(self, payload: m.Message | bytes) -> None:
        data = framing.encode(payload) if isinstance(payload, m.Message) else payload
        await self._write(framing.stream_frame(data))

    async def send_block(self, req_id: int, h: bytes, data: bytes | memoryview) -> None:
        """A DATA block frame, its bytes handed to the transport as they are."""
        await self._write(framing.stream_block_header(framing.KIND_DATA, req_id, h, len(data)), data)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._lost), 1.0)


async def listen(on_link: Callable[[Framed], Coroutine[Any, Any, None]], port: int, ssl_context: ssl.SSLContext,
                 host: str | None = None) -> asyncio.Server:  # fmt: skip
    """Serve peer links on ``port`` (all addresses when ``host`` is None):
    ``on_link`` runs for each once TLS is up. A port in use raises OSError
    (EADDRINUSE) here, even on uvloop, which only logs a failed ``listen()``
    of its own and leaves a dead server: the socket is bound and listening
    before the loop takes it."""
    sock = _listening_socket(host, port)
    try:
        return await asyncio.get_running_loop().create_server(
            lambda: Framed(on_link), sock=sock, ssl=ssl_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
        )
    except BaseException:
        sock.close()
        raise


def _listening_socket(host: str | None, port: int) -> socket.socket:
    if not host:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        return socket.create_server(("", port))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


# --- asking end ----------------------------------------------------------------------


class PeerLink:
    def __init__(
        self, framed: Framed, tags: frozenset[str], expires_s: int, fingerprint: bytes = b""
    ) -> None:
        self.framed = framed
        self.fingerprint = fingerprint  # of the peer's certificate
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
                if isinstance(frame, str):
                    msg = framing.decode(frame)
                    self._resolve(getattr(msg, "id", None), msg)
                else:
                    block = framing.decode_block(frame)
                    self._resolve(block.id, block)
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
        _, framed = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                Framed, host, port, ssl=client_context(), server_hostname=None
            ),
            timeout,
        )
    except (OSError, TimeoutError, ValueError) as e:
        raise PeerGone(f"cannot reach peer {host}:{port}: {str(e) or 'timed out'}") from None
    try:
        der = framed.peer_cert()
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
    return PeerLink(framed, claims.tags, claims.expires_s, peer_fp)


# --- serving end -------------------------------------------------------------------------


@dataclass
class Serving:
    """What the serving end needs from the device: its identity and ticket, and
    a way to read a block of one of the namespaces (opaque tags) allowed."""

    me: Identity
    ticket: Callable[[], str]  # current
    tags: Callable[[], frozenset[str]]  # this device's namespaces now
    server_key: Callable[[], str]
    # (block, namespaces both may read, the asker's fingerprint); bounds its own reads
    read_block: Callable[[bytes, frozenset[str], bytes], Awaitable[bytes | memoryview | None]]
    on_served: Callable[[int], None]


async def serve_link(framed: Framed, serving: Serving) -> None:
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
            task = asyncio.create_task(_answer(framed, frame, allowed, claims.fingerprint, serving))
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


async def _accept(framed: Framed, serving: Serving) -> Any:
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


async def _answer(
    framed: Framed,
    frame: str | bytearray | memoryview,
    allowed: frozenset[str],
    asker: bytes,
    serving: Serving,
) -> None:
    req_id: int | None = None
    try:
        msg = framing.decode(frame) if isinstance(frame, str) else None
        req_id = getattr(msg, "id", None)
        if isinstance(msg, m.Ping):
            await framed.send(m.Pong(msg.id))
            return
        if not isinstance(msg, m.GetBlock):
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "a peer only answers get_block and ping")
        data = await serving.read_block(msg.hash, allowed, asker) if allowed else None
        if data is None:  # the same answer whether it is not here or not theirs to read
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no block {msg.hash.hex()[:12]} here")
        await framed.send_block(msg.id, msg.hash, data)
        serving.on_served(len(data))
    except ProtocolError as e:
        with contextlib.suppress(Exception):
            await framed.send(framing.error_for(req_id, e))
    except (PeerGone, OSError):
        pass
