"""The disk the sync engine works on, as a narrow interface.

Everything the client does to the sync folder (list, stat, read, write,
rename, delete, make durable) goes through a :class:`Disk`. :class:`OsDisk`
is the real one: each method is the ``os`` call of the same name. The
deterministic simulation (``tests/sim``) puts an in-memory disk in its place,
with the filesystem's quirks and faults (case-insensitive and normalising
names, permission errors, a full disk, losing what was not made durable).

Which disk is in use is a context variable rather than a parameter threaded
through every scanner and transfer function: :class:`client.engine.Engine`
takes one and installs it (:func:`use`) for everything it runs, so the
asyncio tasks and worker threads it starts see it too, while several engines
in one process (the simulation) each see their own.

Blocking calls (hashing a folder, writing a fetched file) go through
:meth:`Disk.run`: a worker thread on a real disk, inline on a simulated one,
where no real time passes and threads would make the schedule unrepeatable.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import os
import shutil
import signal
import stat as st
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from client import durable
from protocol import directio

R = TypeVar("R")
PathLike = str | os.PathLike[str]


class ReadFile(Protocol):
    """A file open for reading (what ``open(path, "rb")`` gives)."""

    def read(self, size: int = -1, /) -> bytes: ...
    def readinto(self, b: memoryview) -> int: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def __enter__(self) -> ReadFile: ...
    def __exit__(self, *exc: object) -> None: ...


class Disk(Protocol):
    def lstat(self, path: PathLike) -> os.stat_result: ...
    def stat(self, path: PathLike) -> os.stat_result: ...
    def listdir(self, path: PathLike) -> list[str]: ...
    def exists(self, path: PathLike) -> bool: ...
    def samefile(self, a: PathLike, b: PathLike) -> bool: ...
    def open_read(self, path: PathLike) -> ReadFile: ...
    def read_bytes(self, path: PathLike) -> bytes: ...
    def write_bytes(self, path: PathLike, data: bytes) -> None: ...
    def open(self, path: PathLike, flags: int, mode: int = 0o777) -> int: ...
    def pread(self, fd: int, size: int, offset: int) -> bytes: ...
    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int: ...
    def start_writeback(self, fd: int, offset: int, size: int) -> None: ...
    def pwrite_big(self, fd: int, data: bytes | memoryview, offset: int) -> None: ...
    def pread_big(self, fd: int, size: int, offset: int) -> bytes: ...
    def preallocate(self, fd: int, size: int) -> None: ...
    def write(self, fd: int, data: bytes | memoryview) -> int: ...
    def ftruncate(self, fd: int, size: int) -> None: ...
    def fchmod(self, fd: int, mode: int) -> None: ...
    def fsync(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...
    def utime(self, path: PathLike, ns: tuple[int, int]) -> None: ...
    def rename(self, src: PathLike, dst: PathLike) -> None: ...
    def replace(self, src: PathLike, dst: PathLike) -> None: ...
    def link(self, src: PathLike, dst: PathLike) -> None: ...
    def unlink(self, path: PathLike) -> None: ...
    def mkdir(self, path: PathLike, parents: bool = False, exist_ok: bool = False) -> None: ...
    def rmdir(self, path: PathLike) -> None: ...
    def flush(self, path: PathLike) -> bool: ...
    def fsync_dir(self, path: PathLike) -> None: ...
    def writers_gone(self, path: PathLike) -> bool: ...
    def disk_usage(self, path: PathLike) -> tuple[int, int]: ...  # (total, free) bytes
    async def run(self, fn: Callable[..., R], *args: object) -> R: ...


class OsDisk:
    """The real filesystem."""

    lstat = staticmethod(os.lstat)
    stat = staticmethod(os.stat)
    listdir = staticmethod(os.listdir)
    exists = staticmethod(os.path.exists)
    open = staticmethod(os.open)
    pread = staticmethod(os.pread)
    pwrite = staticmethod(os.pwrite)
    write = staticmethod(os.write)
    ftruncate = staticmethod(os.ftruncate)
    fchmod = staticmethod(os.fchmod)
    fsync = staticmethod(os.fsync)
    close = staticmethod(os.close)
    rename = staticmethod(os.rename)
    replace = staticmethod(os.replace)
    link = staticmethod(os.link)
    unlink = staticmethod(os.unlink)
    rmdir = staticmethod(os.rmdir)

    @staticmethod
    def flush(path: PathLike) -> bool:
        return durable.flush(Path(path))

    start_writeback = staticmethod(durable.start_writeback)

    @staticmethod
    def pwrite_big(fd: int, data: bytes | memoryview, offset: int) -> None:
        """Write a block of a big file through the page cache and start its
        write-back at once, so the disk works while the rest arrives and the
        fsync that makes the file durable finds most of it written. Which of
        this and ``O_DIRECT`` is cheaper depends on the machine: on one disk a
        file's direct writes went to the disk one at a time (about 380 MB/s
        against 650 MB/s this way, and a third of that while the server
        flushed its own blocks beside them); on another, whose fresh guest
        memory faulted on the host, this way cost 2.4-3.9 CPU s per GiB
        against 0.1-0.25 direct, and an hour later no more than direct
        (``bench/README.md``, runs 17 and 18)."""
        view = memoryview(data)
        at = offset
        while view:
            n = os.pwrite(fd, view, at)
            view, at = view[n:], at + n
        durable.start_writeback(fd, offset, len(data))

    pread_big = staticmethod(directio.pread_once)  # a block of a big file, not kept in the page cache
    preallocate = staticmethod(durable.preallocate)

    @staticmethod
    def disk_usage(path: PathLike) -> tuple[int, int]:
        usage = shutil.disk_usage(path)
        return usage.total, usage.free

    @staticmethod
    def fsync_dir(path: PathLike) -> None:
        durable.fsync_dir(Path(path))

    @staticmethod
    def samefile(a: PathLike, b: PathLike) -> bool:
        try:
            return os.path.samefile(a, b)
        except OSError:
            return False

    @staticmethod
    def open_read(path: PathLike) -> ReadFile:
        return open(path, "rb", buffering=0)  # type: ignore[return-value]  # FileIO.readinto may say None

    @staticmethod
    def read_bytes(path: PathLike) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    @staticmethod
    def write_bytes(path: PathLike, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    @staticmethod
    def utime(path: PathLike, ns: tuple[int, int]) -> None:
        os.utime(path, ns=ns)

    @staticmethod
    def mkdir(path: PathLike, parents: bool = False, exist_ok: bool = False) -> None:
        if parents:
            os.makedirs(path, exist_ok=exist_ok)
        else:
            try:
                os.mkdir(path)
            except FileExistsError:
                if not exist_ok or not st.S_ISDIR(os.stat(path).st_mode):
                    raise

    @staticmethod
    def writers_gone(path: PathLike) -> bool:
        """True if no process has the file open for writing: the kernel grants a read
        lease only then (fcntl(2), F_SETLEASE). False when that cannot be told (not
        Linux, not the file's owner, a filesystem without leases, writer checks not
        enabled: :func:`client.scanner.enable_writer_checks`): then only the settle
        time says."""
        if getattr(signal, "SIGIO", None) is None or signal.getsignal(signal.SIGIO) != signal.SIG_IGN:
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return True
        except OSError:  # EAGAIN: open for writing somewhere; EACCES, EINVAL: cannot tell
            return False
        finally:
            os.close(fd)

    @staticmethod
    async def run(fn: Callable[..., R], *args: object) -> R:
        return await asyncio.to_thread(fn, *args)


_REAL = OsDisk()
_current: contextvars.ContextVar[Disk | None] = contextvars.ContextVar("ferry_disk", default=None)


def disk() -> Disk:
    """The disk the code running now works on."""
    return _current.get() or _REAL


@contextlib.contextmanager
def use(d: Disk) -> Iterator[None]:
    """Run the body (and the tasks and threads it starts) on ``d``."""
    token = _current.set(d)
    try:
        yield
    finally:
        _current.reset(token)


def is_dir(path: PathLike) -> bool:
    """A folder, not a link to one."""
    try:
        return st.S_ISDIR(disk().lstat(path).st_mode)
    except OSError:
        return False


def is_file(path: PathLike) -> bool:
    try:
        return st.S_ISREG(disk().lstat(path).st_mode)
    except OSError:
        return False
