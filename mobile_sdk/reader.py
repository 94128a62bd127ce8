"""A remote file opened for reading, fetching only the blocks a read covers.

Every entry the server gives carries its ordered block list with each
block's size, so the block holding byte ``n`` is a bisection over the
running offsets: reading the last KiB of a 1 GiB video fetches one block.
"""

from __future__ import annotations

import bisect
import io
import itertools
from collections.abc import Awaitable, Callable
from types import TracebackType

from protocol.messages import Entry

FetchBlock = Callable[[bytes], Awaitable[bytes]]


class RemoteFile:
    """Async, seekable, read-only. ``read``/``pread`` fetch (or take from the
    cache) just the blocks covering the bytes asked for; the last block read
    is kept in memory, so small sequential reads cost one fetch per block."""

    def __init__(self, entry: Entry, fetch: FetchBlock) -> None:
        self.entry, self.name, self.size = entry, entry.path, entry.size
        self._blocks = entry.blocks or []
        self._offsets = list(itertools.accumulate((b.size for b in self._blocks), initial=0))
        self._fetch = fetch
        self._pos = 0
        self._memo: tuple[int, bytes] | None = None

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"cannot seek to {base + offset}: before the start of the file")
        self._pos = base + offset
        return self._pos

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the current position (all the rest if ``n`` < 0)."""
        data = await self.pread(self._pos, self.size if n < 0 else n)
        self._pos += len(data)
        return data

    async def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``, without moving the position."""
        end = min(self.size, offset + max(n, 0))
        parts = []
        i = bisect.bisect_right(self._offsets, offset) - 1
        while offset < end:
            block = await self._block(i)
            lo, hi = offset - self._offsets[i], min(end - self._offsets[i], len(block))
            parts.append(block[lo:hi])
            offset += hi - lo
            i += 1
        return b"".join(parts)

    async def _block(self, i: int) -> bytes:
        if self._memo is not None and self._memo[0] == i:
            return self._memo[1]
        data = await self._fetch(self._blocks[i].hash)
        self._memo = (i, data)
        return data

    def close(self) -> None:
        self._memo = None

    async def __aenter__(self) -> RemoteFile:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
