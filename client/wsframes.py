"""The desktop client's WebSocket connection: frames read with one copy of
each byte, block uploads written with one.

websockets' sans-I/O reader appends each received chunk to a ``bytearray``,
slices each frame out of it and the message is joined into ``bytes`` again:
three copies of every downloaded byte, about a tenth of a downloading
client's CPU. :class:`FrameConnection` (passed to ``connect`` as
``create_connection``) gives its protocol a :class:`FrameReader` before any
byte arrives, which keeps the chunks (``protocol.chunks.Chunks``) and hands
each frame over as ``bytes`` joined once (websockets then passes a message of
one frame on without copying it).

Sending a block the usual way joins its 40-byte header to its bytes, then
websockets masks the message into a new buffer and copies that into the
frame: three copies. :meth:`FrameConnection.send_parts` masks the header and
the bytes each straight into the frame's pieces (the mask is required of a
client, and makes the one copy).

This reaches into websockets' connection (``send_context``) and protocol
(``reader``, ``parser``, ``writes``); pyproject.toml pins the major versions
it was written for, and tests/client/test_wsframes.py checks both paths
against a real websockets server.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Generator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ProtocolError
from websockets.frames import Opcode
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

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

    async def send_parts(self, *parts: bytes | memoryview) -> None:
        """One binary message: ``parts`` joined, each masked into the frame
        without joining them first (see :func:`masked_frame`)."""
        async with self.send_context():
            if self.protocol.expect_continuation_frame:  # (a fragmented message: we never send one)
                raise ProtocolError("expected a continuation frame")
            self.protocol.writes.extend(masked_frame(parts))


JOIN_UNDER = 64 * 1024  # a smaller message is joined and written whole: one small write beats several


def masked_frame(parts: tuple[bytes | memoryview, ...]) -> list[bytes]:
    """A final, masked binary frame (RFC 6455 5.2) carrying ``parts`` joined,
    as pieces: the frame's head and mask, then each part masked (under
    ``JOIN_UNDER`` bytes, the parts are joined first and the frame is one piece)."""
    length = sum(len(p) for p in parts)
    first = 0x80 | Opcode.BINARY.value  # FIN, binary
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = secrets.token_bytes(4)
    if length < JOIN_UNDER:
        return [head + mask + apply_mask(b"".join(parts), mask)]
    pieces, at = [head + mask], 0
    for part in parts:
        if part:  # (an empty piece would tell the connection to send EOF)
            turn = at % 4  # the mask runs on across parts
            pieces.append(apply_mask(part, mask[turn:] + mask[:turn]))
            at += len(part)
    return pieces
