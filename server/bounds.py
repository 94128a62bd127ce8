"""Bounds that keep one hostile or broken peer from starving everyone else.

- **Connections per IP and per user**: WebSocket sessions are counted per
  client address (before authentication, so a flood of bad tokens counts too)
  and per user (after it); one over either bound is refused with HTTP 429
  before the upgrade. Counts are per server process.
- **Request head timeout**: uvicorn waits for an HTTP request head forever,
  so a client sending its upgrade one byte at a time (slowloris) would hold a
  connection open indefinitely. :func:`head_timeout_protocol` closes the
  connection if a request head has not fully arrived within the timeout of
  the connection opening, or of the request's first byte on a kept-alive one.
- **Closing**: uvicorn's WebSocket protocol waits up to 10 s three times
  over (close frame written, peer's close frame, TCP close) before dropping
  a peer that does not read; :class:`ShortCloseProtocol` waits
  ``CLOSE_TIMEOUT`` instead, so a client cut off for not reading lets go of
  its buffers in seconds.
- **Foreign Origin**: a browser names the page that opened a WebSocket in
  ``Origin``; a socket opened by another site's page is refused with 403
  (native clients send no ``Origin``).

The rest live in :mod:`server.ws`: the hello timeout, the idle (ping)
timeout, in-flight request limits and the send timeout for a client that
stops reading.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol

from server.wsreader import ChunkedStreamReader

CLOSE_TIMEOUT = 2.0  # seconds a peer gets to answer our close frame before its socket is dropped


class Counter:
    """Live sessions per key, refused beyond ``limit`` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._live: collections.Counter[Any] = collections.Counter()

    @contextlib.contextmanager
    def hold(self, key: Any) -> Iterator[bool]:
        """Count one session under ``key`` while the block runs; yields False
        (and counts nothing) if that would go over the limit."""
        if self.limit and self._live[key] >= self.limit:
            yield False
            return
        self._live[key] += 1
        try:
            yield True
        finally:
            self._live[key] -= 1
            if not self._live[key]:
                del self._live[key]

    def __getitem__(self, key: Any) -> int:
        return self._live[key]


def foreign_origin(headers: Mapping[str, str], allowed: tuple[str, ...]) -> str | None:
    """The ``Origin`` of a cross-site WebSocket request (None if it may go on):
    no Origin (a native client), the server's own origin, or a listed one pass."""
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin.rstrip("/") in allowed:
        return None
    if urlsplit(origin).netloc.lower() == headers.get("host", "").lower():
        return None
    return origin


def head_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request head is
    slower than ``seconds``."""

    class HeadTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:  # the next request on a kept-alive connection
                self._start_head_timer()

        def on_headers_complete(self) -> None:
            self._stop_head_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _start_head_timer(self) -> None:
            self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            self.transport.abort()  # nothing useful to say to a peer this slow; free the socket now

    return HeadTimeoutProtocol


class ShortCloseProtocol(WebSocketProtocol):
    """uvicorn's ``websockets`` protocol with a short closing handshake, reading
    frames through a :class:`~server.wsreader.ChunkedStreamReader`, into which
    the socket reads directly once the connection is upgraded (see
    :class:`_ReadInto`)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.close_timeout = CLOSE_TIMEOUT
        # (websockets reads through exactly the StreamReader methods it has)
        self.reader = ChunkedStreamReader(limit=self.read_limit // 2, loop=self.loop)  # type: ignore[assignment]
        self._read_into: _ReadInto | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._read_into is None:
            # the upgrade request, handed over by uvicorn's HTTP protocol right after it made
            # this the transport's protocol: from now on the socket reads into the reader
            self._read_into = _ReadInto(self)
            self.transport.set_protocol(self._read_into)
            if self.transport.is_reading():  # restarted, the read takes the protocol's kind anew (uvloop)
                self.transport.pause_reading()
                self.transport.resume_reading()


class _ReadInto(asyncio.BufferedProtocol):
    """The transport's protocol for an upgraded connection: the socket reads
    into the buffers :class:`~server.wsreader.ChunkedStreamReader` gives it
    (``get_buffer``), a big frame's payload straight into its own; everything
    else goes to the WebSocket protocol. (uvloop treats any subclass of
    ``asyncio.Protocol``, as websockets' protocol is, as a plain one.)"""

    def __init__(self, ws: ShortCloseProtocol) -> None:
        self._ws = ws
        self._reader = cast(ChunkedStreamReader, ws.reader)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._reader.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self._ws.eof_received()  # type: ignore[func-returns-value]

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self._ws.pause_writing()

    def resume_writing(self) -> None:
        self._ws.resume_writing()
