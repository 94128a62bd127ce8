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

Given the socket as a buffered protocol (``get_buffer`` and
``buffer_updated``, see ``server.bounds.ShortCloseProtocol``), the reader goes
one copy further: the payload of a big frame is read from the socket straight
into a buffer of its own (kept by a ``protocol.buffers.Keeper`` and used again
once nothing refers to it), where a plain protocol's read is copied into a new
``bytes`` and then joined with the others.
"""

from __future__ import annotations

import asyncio
import threading
from typing import cast

from protocol.buffers import Keeper
from protocol.chunks import Chunks

__all__ = ["ChunkedStreamReader", "buffers"]

# bytes of a frame still to come past which the socket reads into the frame's own buffer
DIRECT_OVER = 128 * 1024
# bytes a socket read takes at most otherwise (so a big frame goes direct after its first few)
SCRATCH = 32 * 1024
KEPT = 4  # frame buffers kept for reuse, process-wide (a connection reads one frame at a time)
KEPT_FLOOR = 4 * 1024 * 1024 + 64 * 1024  # bytes of a kept buffer: any block's frame fits


# the buffers big frames are read into: process-wide, so a client that announces big
# frames and sends them slowly holds no more than the bytes it sent plus these (a frame
# that finds none free is read through the chunks, as a plain protocol would)
buffers = Keeper(bytearray, KEPT, KEPT_FLOOR)
_scratch = threading.local()  # one per event loop thread: each read is copied out before the next


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
        self._direct: bytearray | None = None  # the big frame being read straight from the socket
        self._filled = 0  # bytes of it read
        self._direct_n = 0  # bytes it will hold

    # -- the protocol's side ---------------------------------------------------------

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.ReadTransport, transport)  # (uvloop's are not subclasses)

    def exception(self) -> BaseException | None:
        return self._exception

    def set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._undirect()
        self._wake(exc)

    def feed_eof(self) -> None:
        self._eof = True
        self._undirect()
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

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the socket puts its next bytes (a buffered protocol's read): the
        rest of the big frame being read, else a scratch buffer that
        :meth:`buffer_updated` copies from."""
        if (
            self._direct is None
            and self._frames
            and self._wanted - self._chunks.size >= DIRECT_OVER
            and (buf := buffers.take(self._wanted)) is not None
        ):
            held = self._chunks.size
            if held:  # the frame's first bytes, read with the header
                buf[:held] = self._chunks.take(held)
            self._direct, self._filled, self._direct_n = buf, held, self._wanted
        if self._filling():
            return memoryview(self._direct)[self._filled : self._direct_n]  # type: ignore[arg-type]
        scratch: bytearray | None = getattr(_scratch, "buf", None)
        if scratch is None:
            scratch = _scratch.buf = bytearray(SCRATCH)
        return memoryview(scratch)

    def buffer_updated(self, nbytes: int) -> None:
        assert not self._eof, "buffer_updated after feed_eof"
        if self._filling():
            self._filled += nbytes
            if self._filled == self._direct_n:
                self._wake()
        elif nbytes:
            with memoryview(_scratch.buf) as scratch, scratch[:nbytes] as got:
                self.feed_data(bytes(got))

    def at_eof(self) -> bool:
        return self._eof and not self._chunks.size and self._direct is None

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
        while True:
            direct = self._direct
            if direct is not None:
                if self._filled == self._direct_n:  # (n: the frame it was started for, one read at a time)
                    self._direct = None
                    return memoryview(direct)[:n]  # type: ignore[return-value]  # (websockets unmasks it)
            elif self._chunks.size >= n:
                return self._take(n)
            elif self._eof:
                raise asyncio.IncompleteReadError(self._take(self._chunks.size), n)
            await self._wait(n)
            self._raise_if_failed()

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

    def _undirect(self) -> None:
        """The connection ended inside a big frame: what came of it goes back to
        the chunks (for the reader's ``IncompleteReadError``), the buffer to the
        keeper, even if nobody reads this connection again."""
        if self._filling():
            assert self._direct is not None
            self._chunks.append(bytes(self._direct[: self._filled]))
            self._direct = None

    def _filling(self) -> bool:
        """Is a big frame being read straight from the socket, and not whole yet?"""
        return self._direct is not None and self._filled < self._direct_n

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def _take(self, n: int) -> bytes:
        data = self._chunks.take(n)
        if self._paused and self._chunks.size <= self._limit:
            self._resume()
        return data
