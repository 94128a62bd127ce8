"""A read buffer for the server's WebSocket connections that copies each
received byte once.

uvicorn's ``websockets`` protocol reads frames from an ``asyncio.StreamReader``
with ``readexactly``. The standard reader appends every chunk the transport
delivers to one ``bytearray`` (a copy, and more copies as it grows) and cuts
each frame out of it with a slice turned into ``bytes`` (two more), and with
its default limit it pauses the socket every 64 KiB of a frame of several MiB.
For a server that mostly receives blocks of 1-4 MiB that was a fifth of its
CPU (bench/README.md, sync.py run 15). :class:`ChunkedStreamReader` keeps the
chunks as delivered (``protocol.chunks.Chunks``) and joins them once per
frame, and pauses the socket only once it holds more than the frame being
read needs, so memory stays bounded by the largest frame allowed
(``ws_max_size``, checked before a frame's payload is read) plus one chunk.

The HTTP upgrade that precedes the frames is read with ``readline`` from the
same chunks; once frames begin, only ``readexactly`` is available.
"""

from __future__ import annotations

import asyncio
from typing import cast

from protocol.chunks import Chunks

__all__ = ["ChunkedStreamReader"]


class ChunkedStreamReader:
    """The part of ``asyncio.StreamReader`` a ``websockets`` connection uses:
    fed by the protocol (``set_transport``, ``feed_data``, ``feed_eof``,
    ``set_exception``), read with ``readline`` for the HTTP head and then
    ``readexactly`` for frames. ``limit`` bounds a line, and the bytes held
    beyond the frame being read before the socket is paused (twice it)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._limit = limit
        self._loop = loop or asyncio.get_running_loop()
        self._chunks = Chunks()
        self._wanted = 0  # bytes the read now waiting needs
        self._eof = False
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._paused = False
        self._frames = False  # set by the first readexactly

    # -- the protocol's side ---------------------------------------------------------

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.ReadTransport, transport)  # (uvloop's are not subclasses)

    def exception(self) -> BaseException | None:
        return self._exception

    def set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._wake(exc)

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        self._chunks.append(data)
        self._wake()
        if (
            not self._paused
            and self._chunks.size > max(2 * self._limit, self._wanted)
            and self._transport is not None
        ):
            self._transport.pause_reading()
            self._paused = True

    def at_eof(self) -> bool:
        return self._eof and not self._chunks.size

    # -- the parser's side -----------------------------------------------------------

    async def readline(self) -> bytes:
        """One line with its b"\\n" (all that is left at EOF); ValueError past ``limit``."""
        if self._frames:
            raise RuntimeError("readline() after readexactly(): this reader only reads frames from then on")
        while not (n := self._chunks.line_end()):
            if self._chunks.size > self._limit:
                raise ValueError(f"line longer than {self._limit} bytes")
            self._raise_if_failed()
            if self._eof:
                return self._take(self._chunks.size)
            await self._wait(self._chunks.size + 1)
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        self._frames = True
        self._raise_if_failed()
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        while self._chunks.size < n:
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(self._chunks.size), n)
            await self._wait(n)
            self._raise_if_failed()
        return self._take(n)

    # -- inside ----------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._exception is not None:
            raise self._exception

    def _wake(self, exc: BaseException | None = None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def _wait(self, wanted: int) -> None:
        """Until more bytes, EOF or an error arrive, wanting ``wanted`` bytes held."""
        if self._waiter is not None:
            raise RuntimeError("two coroutines are reading this connection at once")
        self._wanted = wanted
        self._resume()  # waiting while paused would wait forever
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._wanted = 0

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _take(self, n: int) -> bytes:
        data = self._chunks.take(n)
        if self._paused and self._chunks.size <= self._limit:
            self._resume()
        return data
