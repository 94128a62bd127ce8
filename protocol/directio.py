"""Big block writes and reads that bypass the page cache (Linux ``O_DIRECT``).

Writing a GiB through the page cache costs the kernel a copy of every byte
into pages it must first find, and on the virtual machines Ferry is measured on
(where memory the guest freed goes back to the host) every fresh page is a
fault on the host as well: 1.2-2.0 CPU s per GiB written and fsynced, against
0.2 CPU s with ``O_DIRECT`` (``dd``-style loop of 1 MiB writes, same disk).
The server writes each big block it stores this way (:func:`write_new`: one
new file, fsynced, and many of them at once); its hot blocks live in its own
memory tier, not the page cache. (A client writes a fetched file through the
page cache with its write-back started block by block: direct writes into
one file go to the disk one at a time, see ``client.fs``.) Reads come back
the same way (:func:`pread`), or from the page cache when all of a range is
there (:func:`pread_cached`), or through it without keeping it
(:func:`pread_once`).

``O_DIRECT`` wants the file offset, the length and the memory address aligned
to the device's block (:data:`ALIGN` covers every Linux device). Bytes go
through page-aligned buffers, reused and a few kept (memory stays flat with
file size).

Where there is no ``O_DIRECT`` (not Linux, or a filesystem such as tmpfs that
refuses it) every function here falls back to ordinary I/O and returns the
same result.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Iterator

from protocol.buffers import Keeper

__all__ = ["ALIGN", "pread", "pread_cached", "pread_once", "write_new"]

ALIGN = 4096
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_FADVISE = hasattr(os, "posix_fadvise")
_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
# buffers are private anonymous mappings: lighter page faults than shared ones
_PRIVATE = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR)

_KEEP = 16  # buffers kept for reuse while busy (one per worker thread writing at once)
_KEEP_IDLE = 4  # and once nobody took one for _IDLE_S: the rest are unmapped
_IDLE_S = 5.0
_FLOOR = 4 * 1024 * 1024 + 2 * ALIGN  # a buffer holds any block (4 MiB at most) with its partial pages


def _aligned(size: int) -> mmap.mmap:
    return mmap.mmap(-1, _up(size), **_PRIVATE)


# a fresh buffer costs a fault and a zero fill per page; a reused one neither
_buffers = Keeper(_aligned, _KEEP, _FLOOR, idle_s=_IDLE_S, keep=_KEEP_IDLE)


@contextlib.contextmanager
def _buffer(size: int) -> Iterator[memoryview]:
    """A page-aligned buffer of ``size`` bytes, for the length of a ``with``:
    a kept one when one is free (memory is bounded by the blocks in flight,
    not by file size), else one made for this use alone."""
    buf = _buffers.take(size)
    if buf is None:  # all in use (or bigger than any block)
        buf = _aligned(size)
    with memoryview(buf) as whole, whole[:size] as view:
        yield view


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _down(n: int) -> int:
    return n // ALIGN * ALIGN


def _twin(fd: int, flags: int) -> int | None:
    """A second descriptor of ``fd``'s file opened with ``O_DIRECT``, or None
    where that cannot be had."""
    if not O_DIRECT:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _REFUSED:
            return None
        raise


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` of the file open (for reading) as
    ``fd``, read directly where it can be (else through ``fd``)."""
    lo, hi = _down(offset), _up(offset + size)
    twin = _twin(fd, os.O_RDONLY) if size >= ALIGN else None
    if twin is None:
        return os.pread(fd, size, offset)
    try:
        with _buffer(hi - lo) as aligned:
            try:
                got = os.preadv(twin, [aligned], lo)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                return os.pread(fd, size, offset)
            start = offset - lo
            return bytes(aligned[start : max(start, min(got, start + size))])
    finally:
        os.close(twin)


def pread_cached(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` of ``fd``'s file: from the page cache
    when all of them are there (a file just written, or read by someone else:
    no disk read, and no wait for its dirty pages to be written first), else
    read directly (:func:`pread`)."""
    if size >= ALIGN and _NOWAIT and O_DIRECT:
        with _buffer(size) as buf:
            try:
                got = os.preadv(fd, [buf], offset, _NOWAIT)
            except OSError:
                got = -1  # (BlockingIOError: not all in the page cache)
            if got == size or (
                0 <= got and offset + got >= os.fstat(fd).st_size
            ):  # all, or all up to the end
                return bytes(buf[:got])
    return pread(fd, size, offset)


def pread_once(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` of ``fd``'s file, read through the
    page cache (with the kernel's read-ahead, which direct reads lack) and then
    dropped from it, so that a long sequential read keeps recycling the same
    few pages instead of faulting in fresh ones: reading and hashing a cold
    GiB this way took 0.7 s here, against 1.2-1.5 s read directly and
    2.2-2.7 s through the page cache kept."""
    data = os.pread(fd, size, offset)
    if _FADVISE:
        os.posix_fadvise(fd, offset, len(data), os.POSIX_FADV_DONTNEED)
    return data


def write_new(path: str | os.PathLike[str], data: bytes | memoryview, flags: int, mode: int) -> bool:
    """Create ``path`` (``os.open`` with ``flags`` and ``mode``, which must
    create it) holding ``data``, written directly and fsynced. False when the
    filesystem refuses ``O_DIRECT`` (nothing is created then)."""
    if not O_DIRECT or len(data) < ALIGN:
        return False
    try:
        fd = os.open(path, flags | O_DIRECT, mode)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    try:
        padded = _up(len(data))
        with _buffer(padded) as aligned:
            aligned[: len(data)] = data
            aligned[len(data) :] = bytes(padded - len(data))
            try:
                _pwrite_all(fd, aligned, 0)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                refused = True  # the device wants a stricter alignment
            else:
                refused = False
                os.ftruncate(fd, len(data))
                os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    if refused:
        os.unlink(path)
    return not refused
