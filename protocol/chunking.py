"""Content-defined chunking (FastCDC 2020 via pyfastcdc) and block hashing.

Cut points depend only on nearby bytes, so inserting bytes into a big file
changes the block around the insertion and leaves the others as they were.
Sizes: 256 KiB minimum, 4 MiB maximum, about 1 MiB on average.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from pyfastcdc import FastCDC

from protocol.hashing import block_hash

MIN_BLOCK = 256 * 1024
MAX_BLOCK = 4 * 1024 * 1024
# pyfastcdc's real average is avg_size + min_size (cut-point skipping).
_AVG_PARAM = 1024 * 1024 - MIN_BLOCK


class Readable(Protocol):
    def readinto(self, b: memoryview) -> int: ...


@dataclass(frozen=True, slots=True)
class Block:
    offset: int
    length: int
    hash: bytes
    data: memoryview  # valid only until the next block is produced


def _chunker() -> FastCDC:
    return FastCDC(_AVG_PARAM, min_size=MIN_BLOCK, max_size=MAX_BLOCK, normalized_chunking=1)


# A stream no longer than MIN_BLOCK is one block: no cut comes before MIN_BLOCK,
# so both chunkers hand it out without setting pyfastcdc up (~1 ms a file: most
# of a small file's cost). They read MIN_BLOCK + 1 bytes first to tell.


def chunk_stream(stream: Readable) -> Iterator[Block]:
    """Cut a binary stream into hashed blocks; memory stays at a few MiB.

    Each ``Block.data`` is only valid until the iterator advances: copy it
    (``bytes(block.data)``) if it must outlive the step.
    """
    head = memoryview(bytearray(MIN_BLOCK + 1))
    n = _fill(stream, head)
    if n <= MIN_BLOCK:
        if n:
            yield Block(0, n, block_hash(head[:n]), head[:n])
        return
    for c in _chunker().cut_stream(_Prefixed(head, stream)):
        yield Block(c.offset, c.length, block_hash(c.data), c.data)


def _fill(stream: Readable, buf: memoryview) -> int:
    """Read until ``buf`` is full or the stream ends; the bytes read."""
    n = 0
    while n < len(buf):
        got = stream.readinto(buf[n:])
        if not got:
            break
        n += got
    return n


class _Prefixed:
    """``head`` (bytes already read from ``rest``), then the rest of ``rest``."""

    def __init__(self, head: memoryview, rest: Readable) -> None:
        self.head, self.rest = head, rest

    def readinto(self, b: memoryview) -> int:
        if not self.head:
            return self.rest.readinto(b)
        n = min(len(b), len(self.head))
        b[:n] = self.head[:n]
        self.head = self.head[n:]
        return n


PIECE = 4 * 1024 * 1024  # bytes read at a time by :func:`chunk_hashes` (two such buffers in use)
_hasher: ThreadPoolExecutor | None = None


def _hash_thread() -> ThreadPoolExecutor:
    global _hasher
    if _hasher is None:
        _hasher = ThreadPoolExecutor(1, thread_name_prefix="ferry-hash")
    return _hasher


def chunk_hashes(stream: Readable) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, hash) of each block of a binary stream: the blocks of
    :func:`chunk_stream`, cut on this thread while another hashes them, so the
    two run on two cores (both release the interpreter lock). Memory: two
    buffers of :data:`PIECE` plus a block."""
    head = memoryview(bytearray(MIN_BLOCK + 1))
    n = _fill(stream, head)
    if n <= MIN_BLOCK:
        if n:
            yield 0, n, block_hash(head[:n])
        return
    chunker, pool = _chunker(), _hash_thread()
    views = [memoryview(bytearray(PIECE + MAX_BLOCK)) for _ in range(2)]
    views[0][:n] = head[:n]
    # blocks cut but not yet handed out, oldest first: (offset, length, hash being computed)
    pending: deque[tuple[int, int, Future[bytes]]] = deque()
    filled, base, turn = n, 0, 0
    try:
        while True:
            view = views[turn]
            filled += _fill(stream, view[filled:])
            eof = filled < len(view)
            at = 0
            for c in chunker.cut_buf(view[:filled]):
                if not eof and c.offset + c.length >= filled:
                    break  # cut by the buffer's end, not its content: again with more bytes
                pending.append((base + c.offset, c.length, pool.submit(block_hash, c.data)))
                at = c.offset + c.length
            # the other buffer is about to be refilled: hand out every block still hashing from it
            # (at the end: every block)
            while pending and (eof or pending[0][0] < base):
                offset, length, future = pending.popleft()
                yield offset, length, future.result()
            if eof:
                return
            carry = filled - at
            views[1 - turn][:carry] = view[at:filled]
            base, filled, turn = base + at, carry, 1 - turn
    finally:
        for _, _, future in pending:
            future.cancel()
        for _, _, future in pending:
            if not future.cancelled():
                future.result()  # it still reads a buffer: let it finish before the buffer goes


def chunk_bytes(data: bytes) -> list[Block]:
    """Cut an in-memory buffer (tests, small files)."""
    return [Block(c.offset, c.length, block_hash(c.data), c.data) for c in _chunker().cut_buf(data)]
