"""The desktop client's WebSocket connection, reading frames with one copy.

websockets' sans-I/O reader appends each received chunk to a ``bytearray``,
slices each frame out of it and the message is joined into ``bytes`` again:
three copies of every downloaded byte, about a tenth of a downloading
client's CPU. :class:`FrameConnection` (passed to ``connect`` as
``create_connection``) gives its protocol a :class:`FrameReader` before any
byte arrives, which keeps the chunks (``protocol.chunks.Chunks``) and hands
each frame over as ``bytes`` joined once (websockets then passes a message of
one frame on without copying it).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.streams import StreamReader

from protocol.chunks import Chunks

__all__ = ["FrameConnection", "FrameReader"]


class FrameReader(StreamReader):
    """websockets' ``StreamReader`` (same methods and errors), its bytes kept as chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks = Chunks()

    def read_line(  # type: ignore[override]  # (bytes, not bytearray)
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytes]:
        while not (n := self.chunks.line_end()):
            if self.chunks.size > m:
                raise too_long_exc_type(f"read {self.chunks.size} bytes, expected no more than {m} bytes")
            if self.eof:
                raise EOFError(f"stream ends after {self.chunks.size} bytes, before end of line")
            yield
        if n > m:
            raise too_long_exc_type(f"read {n} bytes, expected no more than {m} bytes")
        return self.chunks.take(n)

    def read_exact(self, n: int) -> Generator[None, None, bytes]:  # type: ignore[override]
        assert n >= 0
        while self.chunks.size < n:
            if self.eof:
                raise EOFError(f"stream ends after {self.chunks.size} bytes, expected {n} bytes")
            yield
        return self.chunks.take(n)

    def read_to_eof(  # type: ignore[override]
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytes]:
        while not self.eof:
            if self.chunks.size > m:
                raise too_long_exc_type(f"read {self.chunks.size} bytes, expected no more than {m} bytes")
            yield
        if self.chunks.size > m:
            raise too_long_exc_type(f"read {self.chunks.size} bytes, expected no more than {m} bytes")
        return self.chunks.take(self.chunks.size)

    def at_eof(self) -> Generator[None, None, bool]:
        while True:
            if self.chunks.size:
                return False
            if self.eof:
                return True
            yield

    def feed_data(self, data: bytes | bytearray) -> None:
        if self.eof:
            raise EOFError("stream ended")
        self.chunks.append(data)

    def discard(self) -> None:
        self.chunks.clear()


class FrameConnection(ClientConnection):
    """websockets' client connection, its protocol reading through a :class:`FrameReader`."""

    def __init__(self, protocol: ClientProtocol, **kw: Any) -> None:
        super().__init__(protocol, **kw)
        # Nothing has been received yet (the connection is being made): the
        # parser, waiting for the handshake's first line, starts over on the new reader.
        protocol.reader = FrameReader()
        protocol.parser = protocol.parse()
        next(protocol.parser)
