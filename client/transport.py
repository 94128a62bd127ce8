"""One authenticated WebSocket to the server: a thin driver over :mod:`protocol`.

Requests get ids and futures; a reader task resolves them as replies arrive,
so many requests are in flight at once (bounded by the server's announced
``max_in_flight``). ``changed`` pushes go to an optional callback. When the
socket drops, every pending request fails with :class:`ConnectionLost` and
callers decide whether to reconnect (see :func:`connect`, which retries with
exponential backoff and jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from client.wsframes import FrameConnection
from protocol import PROTOCOL_VERSIONS, failpoints, framing
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError

T = TypeVar("T", bound=m.Message)
CLIENT_NAME = "ferry-cli/0.1"
PING_EVERY = 20.0


class ConnectionLost(Exception):
    """The server is unreachable or the connection dropped; safe to retry."""


def ws_url(server: str) -> str:
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not a server URL: {server!r} (try http://host:8765)")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def backoff_delays(base: float = 0.2, cap: float = 10.0) -> Any:
    """Exponential backoff with full jitter: 0.2 s, 0.4 s ... capped at 10 s."""
    for attempt in itertools.count():
        yield random.uniform(0, min(cap, base * 2**attempt))


class Connection:
    def __init__(self, ws: FrameConnection, welcome: m.Welcome) -> None:
        self.ws = ws
        self.welcome = welcome
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._window = asyncio.Semaphore(max(1, welcome.max_in_flight))
        self.on_changed: Callable[[m.Changed | m.NamespacesChanged | m.Incoming], None] | None = None
        self.on_closed: Callable[[], None] | None = None
        self._closed_reason: str | None = None
        self._reader = asyncio.create_task(self._read_loop())
        self._pinger = asyncio.create_task(self._ping_loop())

    @property
    def root_ns(self) -> int:
        return next((n.ns for n in self.welcome.namespaces if n.path == "/"), 0)

    async def close(self) -> None:
        self._pinger.cancel()
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    async def _read_loop(self) -> None:
        try:
            async for frame in self.ws:
                if isinstance(frame, bytes):
                    block = framing.decode_block(frame)
                    self._resolve(block.id, block)
                    continue
                msg = framing.decode(frame)
                if isinstance(msg, m.Changed | m.NamespacesChanged | m.Incoming):
                    if self.on_changed:
                        self.on_changed(msg)
                    continue
                self._resolve(getattr(msg, "id", None), msg)
        except ConnectionClosed as e:
            self._closed_reason = e.rcvd.reason if e.rcvd and e.rcvd.reason else "connection closed"
        except (OSError, ProtocolError) as e:
            self._closed_reason = str(e)
        finally:
            self._closed_reason = self._closed_reason or "connection closed by the server"
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost(self._closed_reason))
            self._pending.clear()
            if self.on_closed:
                self.on_closed()

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(PING_EVERY)
            try:
                await asyncio.wait_for(self.call(lambda i: m.Ping(i)), PING_EVERY * 2)
            except (ConnectionLost, TimeoutError):
                await self.ws.close()
                return

    def _resolve(self, req_id: int | None, value: Any) -> None:
        fut = self._pending.pop(req_id, None) if req_id is not None else None
        if fut is not None and not fut.done():
            fut.set_result(value)

    async def _roundtrip(self, req_id: int, payload: str | bytes | tuple[bytes, bytes | memoryview]) -> Any:
        if self._closed_reason is not None:
            raise ConnectionLost(self._closed_reason)
        async with self._window:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending[req_id] = fut
            try:
                if isinstance(payload, tuple):  # a block frame's header and bytes, masked in place
                    await self.ws.send_parts(*payload)
                else:
                    await self.ws.send(payload)
            except (ConnectionClosed, OSError) as e:
                self._pending.pop(req_id, None)
                raise ConnectionLost(str(e)) from None
            reply = await fut
        if isinstance(reply, m.Error):
            raise ProtocolError.received(reply.code, reply.message, reply.detail)
        return reply

    async def call(self, make: Callable[[int], m.Message], expect: type[T] | None = None) -> Any:
        req_id = next(self._ids)
        reply = await self._roundtrip(req_id, framing.encode(make(req_id)))
        if expect is not None and not isinstance(reply, expect):
            raise ProtocolError(ErrorCode.PROTOCOL, f"expected {expect.TYPE}, got {reply.TYPE}")
        return reply

    async def put_block(self, h: bytes, data: bytes | memoryview) -> None:
        req_id = next(self._ids)
        await self._roundtrip(req_id, (framing.block_header(framing.KIND_PUT, req_id, h), data))
        failpoints.hit("client.upload.block")

    async def get_block(self, h: bytes) -> memoryview | bytes:
        req_id = next(self._ids)
        frame: framing.BlockFrame = await self._roundtrip(req_id, framing.encode(m.GetBlock(req_id, h)))
        return frame.data


async def open_connection(server: str, token: str) -> Connection:
    """Connect once: upgrade with the token, then hello/welcome."""
    url = ws_url(server)
    try:
        ws = await ws_connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=16 * 1024 * 1024,
            compression=None,
            ping_interval=None,  # the protocol's own ping keeps the link alive
            open_timeout=15,
            write_limit=4 * 1024 * 1024,
            create_connection=FrameConnection,  # frames read with one copy (client.wsframes)
        )
    except InvalidStatus as e:
        status = e.response.status_code
        body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
        if status == 401:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, body or "the server refused this device's token"
            ) from None
        raise ConnectionLost(f"server at {server} answered HTTP {status}: {body}") from None
    except InvalidURI:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not a server URL: {server!r}") from None
    except (OSError, TimeoutError, websockets.exceptions.InvalidHandshake) as e:
        raise ConnectionLost(f"cannot reach the server at {server}: {e}") from None
    try:
        await ws.send(framing.encode(m.Hello(list(PROTOCOL_VERSIONS), CLIENT_NAME, features=["incoming"])))
        reply = framing.decode(await asyncio.wait_for(ws.recv(), 15))
    except (ConnectionClosed, OSError, TimeoutError) as e:
        raise ConnectionLost(f"handshake with {server} failed: {e}") from None
    if isinstance(reply, m.Error):
        await ws.close()
        raise ProtocolError.received(reply.code, reply.message, unknown=ErrorCode.PROTOCOL)
    if not isinstance(reply, m.Welcome):
        await ws.close()
        raise ProtocolError(ErrorCode.PROTOCOL, f"server answered hello with {reply.TYPE}")
    return Connection(cast(FrameConnection, ws), reply)


async def connect(server: str, token: str, retry_for: float) -> Connection:
    """:func:`open_connection`, retried with backoff while the server is away."""
    deadline = time.monotonic() + retry_for
    for delay in backoff_delays():
        try:
            return await open_connection(server, token)
        except ConnectionLost:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
