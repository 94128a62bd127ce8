"""Received bytes kept as the chunks the socket delivered, taken out with at
most one copy.

A stream reader that appends each chunk to one ``bytearray`` and slices each
frame out of it copies every byte two or three times (append, slice, convert
to ``bytes``), plus reallocations as the buffer grows. :class:`Chunks` keeps
the chunks and joins them once per frame; a frame that is exactly one chunk is
handed over as it came. The WebSocket readers of the server
(``server.wsreader``) and of the desktop client (``client.wsframes``) keep
their bytes here.
"""

from __future__ import annotations

import collections

__all__ = ["Chunks"]


class Chunks:
    __slots__ = ("_chunks", "_offset", "size")

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of _chunks[0] already taken
        self.size = 0  # bytes held, not yet taken

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            # (a mutable buffer may be reused by whoever handed it over: copied)
            self._chunks.append(data if type(data) is bytes else bytes(data))
            self.size += len(data)

    def clear(self) -> None:
        self._chunks.clear()
        self._offset = self.size = 0

    def line_end(self) -> int:
        """How many bytes up to and including the first b"\\n", or 0 if none is held."""
        seen = 0
        for i, chunk in enumerate(self._chunks):
            start = self._offset if i == 0 else 0
            at = chunk.find(b"\n", start)
            if at >= 0:
                return seen + at + 1 - start
            seen += len(chunk) - start
        return 0

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes held (``0 <= n <= size``), copied at most once."""
        if n == 0:
            return b""
        first, offset = self._chunks[0], self._offset
        self.size -= n
        if len(first) - offset > n:  # inside the first chunk; the rest of it stays
            self._offset = offset + n
            return first[offset : offset + n]
        self._chunks.popleft()
        self._offset = 0
        if len(first) - offset == n:
            return first if offset == 0 else first[offset:]
        parts: list[bytes | memoryview] = [memoryview(first)[offset:]]
        need = n - (len(first) - offset)
        while need:
            chunk = self._chunks[0]
            if len(chunk) <= need:
                parts.append(chunk)
                self._chunks.popleft()
                need -= len(chunk)
            else:
                parts.append(memoryview(chunk)[:need])
                self._offset = need
                need = 0
        return b"".join(parts)
