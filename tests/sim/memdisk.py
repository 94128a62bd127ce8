"""An in-memory filesystem for the simulation: a :class:`client.fs.Disk`.

Modes: ``posix`` (names byte for byte), ``nocase`` (case-insensitive and
case-preserving, as macOS and Windows by default) and ``nfd`` (stores names
decomposed and finds them in any normal form, as HFS+). Faults: a file or
folder without read permission (``chmod``), a capacity (writes beyond it fail
with ENOSPC), and :meth:`crash`, which brings back the disk as it was at its
last durability barrier (any ``fsync``, ``fsync_dir`` or ``flush``: coarser
than a real disk, which keeps only what each call covered, so what it loses is
a subset of what a real one may lose).
"""

from __future__ import annotations

import errno
import io
import os
import stat as st
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _err(code: int, path: object) -> OSError:
    cls = {errno.ENOENT: FileNotFoundError, errno.EEXIST: FileExistsError, errno.EACCES: PermissionError,
           errno.ENOTDIR: NotADirectoryError, errno.EISDIR: IsADirectoryError}.get(code, OSError)  # fmt: skip
    return cls(code, os.strerror(code), str(path))


@dataclass
class _File:
    ino: int
    data: bytes = b""
    mode: int = 0o644
    mtime_ns: int = 0


@dataclass
class _Dir:
    ino: int
    mode: int = 0o755
    mtime_ns: int = 0
    entries: dict[str, tuple[str, _File | _Dir]] = field(default_factory=dict)  # key -> (name, node)


def _clone(node: _File | _Dir) -> _File | _Dir:
    """A deep copy of ``node`` (what ``copy.deepcopy`` does, several times faster: bytes are shared)."""
    if isinstance(node, _File):
        return _File(node.ino, node.data, node.mode, node.mtime_ns)
    entries = {key: (name, _clone(child)) for key, (name, child) in node.entries.items()}
    return _Dir(node.ino, node.mode, node.mtime_ns, entries)


def _clone_dir(node: _Dir) -> _Dir:
    copied = _clone(node)
    assert isinstance(copied, _Dir)
    return copied


@dataclass
class _Fd:
    node: _File
    writable: bool
    pos: int = 0


class MemDisk:
    def __init__(self, mode: str, now_ns: Callable[[], int], capacity: int | None = None) -> None:
        assert mode in ("posix", "nocase", "nfd")
        self.mode = mode
        self.now_ns = now_ns
        self.capacity = capacity
        self._ino = 1
        self.root = _Dir(self._next_ino())
        self._fds: dict[int, _Fd] = {}
        self._durable = _clone_dir(self.root)

    # --- names -------------------------------------------------------------------

    def _next_ino(self) -> int:
        self._ino += 1
        return self._ino

    def _key(self, name: str) -> str:
        if self.mode == "nocase":
            return unicodedata.normalize("NFC", name).casefold()
        if self.mode == "nfd":
            return unicodedata.normalize("NFD", name)
        return name

    def _stored(self, name: str) -> str:
        return unicodedata.normalize("NFD", name) if self.mode == "nfd" else name

    def _parts(self, path: object) -> list[str]:
        text = os.fspath(path)  # type: ignore[call-overload]
        assert text.startswith("/"), text
        return [p for p in text.split("/") if p]

    def _walk(self, parts: list[str], path: object) -> _File | _Dir:
        node: _File | _Dir = self.root
        for part in parts:
            if not isinstance(node, _Dir):
                raise _err(errno.ENOTDIR, path)
            if not node.mode & 0o100:
                raise _err(errno.EACCES, path)
            found = node.entries.get(self._key(part))
            if found is None:
                raise _err(errno.ENOENT, path)
            node = found[1]
        return node

    def _node(self, path: object) -> _File | _Dir:
        return self._walk(self._parts(path), path)

    def _parent(self, path: object, write: bool = True) -> tuple[_Dir, str]:
        parts = self._parts(path)
        if not parts:
            raise _err(errno.EEXIST, path)
        parent = self._walk(parts[:-1], path)
        if not isinstance(parent, _Dir):
            raise _err(errno.ENOTDIR, path)
        if write and not parent.mode & 0o200:
            raise _err(errno.EACCES, path)
        return parent, parts[-1]

    def _used(self, node: _File | _Dir | None = None) -> int:
        node = node or self.root
        if isinstance(node, _File):
            return len(node.data)
        return sum(self._used(child) for _, child in node.entries.values())

    def _room_for(self, more: int, path: object) -> None:
        if self.capacity is not None and more > 0 and self._used() + more > self.capacity:
            raise _err(errno.ENOSPC, path)

    def _touch_dir(self, d: _Dir) -> None:
        d.mtime_ns = self.now_ns()

    # --- the Disk interface ---------------------------------------------------------

    def lstat(self, path: object) -> os.stat_result:
        node = self._node(path)
        kind = st.S_IFREG if isinstance(node, _File) else st.S_IFDIR
        size = len(node.data) if isinstance(node, _File) else 0
        t = node.mtime_ns
        return os.stat_result((kind | node.mode, node.ino, 1, 1, 0, 0, size, t // 10**9, t // 10**9,
                               t // 10**9, t / 1e9, t / 1e9, t / 1e9, t, t, t))  # fmt: skip

    stat = lstat

    def listdir(self, path: object) -> list[str]:
        node = self._node(path)
        if not isinstance(node, _Dir):
            raise _err(errno.ENOTDIR, path)
        if not node.mode & 0o400:
            raise _err(errno.EACCES, path)
        return sorted(name for name, _ in node.entries.values())

    def exists(self, path: object) -> bool:
        try:
            self._node(path)
            return True
        except OSError:
            return False

    def samefile(self, a: object, b: object) -> bool:
        try:
            return self._node(a) is self._node(b)
        except OSError:
            return False

    def _readable(self, path: object) -> _File:
        node = self._node(path)
        if isinstance(node, _Dir):
            raise _err(errno.EISDIR, path)
        if not node.mode & 0o400:
            raise _err(errno.EACCES, path)
        return node

    def open_read(self, path: object) -> io.BytesIO:
        return io.BytesIO(self._readable(path).data)

    def read_bytes(self, path: object) -> bytes:
        return self._readable(path).data

    def write_bytes(self, path: object, data: bytes) -> None:
        """Create or overwrite in place (what an editor's plain save does)."""
        parent, name = self._parent(path)
        found = parent.entries.get(self._key(name))
        if found is not None and isinstance(found[1], _Dir):
            raise _err(errno.EISDIR, path)
        old = len(found[1].data) if found is not None and isinstance(found[1], _File) else 0
        self._room_for(len(data) - old, path)
        if found is None:
            node = _File(self._next_ino())
            parent.entries[self._key(name)] = (self._stored(name), node)
            self._touch_dir(parent)
        else:
            node = found[1]  # type: ignore[assignment]
            if not node.mode & 0o200:
                raise _err(errno.EACCES, path)
        node.data = bytes(data)
        node.mtime_ns = self.now_ns()

    def open(self, path: object, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT and (flags & os.O_EXCL or not self.exists(path)):
            parent, name = self._parent(path)
            if self._key(name) in parent.entries:
                raise _err(errno.EEXIST, path)
            node = _File(self._next_ino(), mode=mode & 0o777, mtime_ns=self.now_ns())
            parent.entries[self._key(name)] = (self._stored(name), node)
            self._touch_dir(parent)
        else:
            node = self._readable(path)
            if flags & os.O_TRUNC:
                node.data = b""
        fd = 1000 + len(self._fds)
        while fd in self._fds:
            fd += 1
        self._fds[fd] = _Fd(node, bool(flags & (os.O_WRONLY | os.O_RDWR)))
        return fd

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return self._fds[fd].node.data[offset : offset + size]

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        f = self._fds[fd]
        assert f.writable
        old = f.node.data
        new = old[:offset].ljust(offset, b"\0") + bytes(data) + old[offset + len(data) :]
        self._room_for(len(new) - len(old), fd)
        f.node.data = new
        f.node.mtime_ns = self.now_ns()
        return len(data)

    def link(self, src: object, dst: object) -> None:
        raise _err(errno.EPERM, dst)  # hard links are not simulated (only big files use them)

    def preallocate(self, fd: int, size: int) -> None:
        pass  # a hint only: the writes themselves fail on a full disk

    def start_writeback(self, fd: int, offset: int, size: int) -> None:
        pass  # a hint only: durability still comes from fsync

    def pwrite_big(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self.pwrite(fd, data, offset)  # the real disk's early write-back is a matter of speed only

    def pread_big(self, fd: int, size: int, offset: int) -> bytes:
        return self.pread(fd, size, offset)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        f = self._fds[fd]
        n = self.pwrite(fd, data, f.pos)
        f.pos += n
        return n

    def ftruncate(self, fd: int, size: int) -> None:
        f = self._fds[fd]
        self._room_for(size - len(f.node.data), fd)
        f.node.data = f.node.data[:size].ljust(size, b"\0")

    def fchmod(self, fd: int, mode: int) -> None:
        self._fds[fd].node.mode = mode & 0o777

    def fsync(self, fd: int) -> None:
        self.barrier()

    def close(self, fd: int) -> None:
        del self._fds[fd]

    def utime(self, path: object, ns: tuple[int, int]) -> None:
        self._node(path).mtime_ns = ns[1]

    def chmod(self, path: object, mode: int) -> None:
        self._node(path).mode = mode & 0o777

    def rename(self, src: object, dst: object) -> None:
        sp, sname = self._parent(src)
        dp, dname = self._parent(dst)
        found = sp.entries.get(self._key(sname))
        if found is None:
            raise _err(errno.ENOENT, src)
        node = found[1]
        if isinstance(node, _Dir) and self._inside(node, dp):  # a folder into itself
            raise _err(errno.EINVAL, dst)
        target = dp.entries.get(self._key(dname))
        if target is not None and target[1] is not node:
            if isinstance(target[1], _Dir):
                if not isinstance(node, _Dir):
                    raise _err(errno.EISDIR, dst)
                if target[1].entries:
                    raise _err(errno.ENOTEMPTY, dst)
            elif isinstance(node, _Dir):
                raise _err(errno.ENOTDIR, dst)
        del sp.entries[self._key(sname)]
        dp.entries[self._key(dname)] = (self._stored(dname), node)
        self._touch_dir(sp)
        self._touch_dir(dp)

    def _inside(self, folder: _Dir, node: _Dir) -> bool:
        if node is folder:
            return True
        return any(isinstance(c, _Dir) and self._inside(c, node) for _, c in folder.entries.values())

    replace = rename

    def unlink(self, path: object) -> None:
        parent, name = self._parent(path)
        found = parent.entries.get(self._key(name))
        if found is None:
            raise _err(errno.ENOENT, path)
        if isinstance(found[1], _Dir):
            raise _err(errno.EISDIR, path)
        del parent.entries[self._key(name)]
        self._touch_dir(parent)

    def mkdir(self, path: object, parents: bool = False, exist_ok: bool = False) -> None:
        parts = self._parts(path)
        if parents:
            for i in range(1, len(parts)):
                sub = "/" + "/".join(parts[:i])
                if not self.exists(sub):
                    self.mkdir(sub)
        try:
            parent, name = self._parent(path)
        except FileExistsError:
            if exist_ok:
                return
            raise
        found = parent.entries.get(self._key(name))
        if found is not None:
            if exist_ok and isinstance(found[1], _Dir):
                return
            raise _err(errno.EEXIST, path)
        parent.entries[self._key(name)] = (self._stored(name), _Dir(self._next_ino(), mtime_ns=self.now_ns()))
        self._touch_dir(parent)

    def rmdir(self, path: object) -> None:
        parent, name = self._parent(path)
        found = parent.entries.get(self._key(name))
        if found is None:
            raise _err(errno.ENOENT, path)
        if not isinstance(found[1], _Dir):
            raise _err(errno.ENOTDIR, path)
        if found[1].entries:
            raise _err(errno.ENOTEMPTY, path)
        del parent.entries[self._key(name)]
        self._touch_dir(parent)

    def flush(self, path: object) -> bool:
        self.barrier()
        return True

    def fsync_dir(self, path: object) -> None:
        self.barrier()

    def disk_usage(self, path: object) -> tuple[int, int]:
        total = self.capacity if self.capacity is not None else 1 << 40
        return total, max(total - self._used(), 0)

    def writers_gone(self, path: object) -> bool:
        return True  # every write here is whole between two awaits: nobody holds a file open

    async def run(self, fn: Callable[..., Any], *args: object) -> Any:
        return fn(*args)

    # --- durability and crashes ----------------------------------------------------

    def barrier(self) -> None:
        self._durable = _clone_dir(self.root)

    def crash(self) -> None:
        """Power loss: back to the last barrier; open files are gone."""
        self.root = _clone_dir(self._durable)
        self._fds.clear()

    # --- for the oracle ---------------------------------------------------------------

    def peek(self, path: object) -> bytes:
        """A file's bytes, whatever its permissions."""
        node = self._node(path)
        if not isinstance(node, _File):
            raise _err(errno.EISDIR, path)
        return node.data

    def files(self, top: str) -> dict[str, tuple[str, bytes | None, bool, int]]:
        """Every file and folder below ``top``: path relative to it, as listed -> (kind, bytes, executable, mode)."""
        out: dict[str, tuple[str, bytes | None, bool, int]] = {}

        def walk(d: _Dir, prefix: str) -> None:
            for name, node in d.entries.values():
                path = prefix + "/" + name
                if isinstance(node, _Dir):
                    out[path] = ("dir", None, False, node.mode)
                    walk(node, path)
                else:
                    out[path] = ("file", node.data, bool(node.mode & 0o100), node.mode)

        top_node = self._node(top)
        assert isinstance(top_node, _Dir)
        walk(top_node, "")
        return out
