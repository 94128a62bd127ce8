"""Block store in a local directory tree: ``root/ab/<64 hex>`` (256 folders,
created up front, so a put never creates a directory).

Writes go to ``root/tmp/`` first, are made durable, then renamed into place (and
the renames made durable), so a block is either wholly visible under its name or
not at all, even across a crash, and a put returns only once both are on disk.
Small blocks that arrive together are written as one group (``server.coalesce``):
all temp files, one ``syncfs`` of the store's filesystem, all renames, one more
``syncfs`` — two flushes for a burst of a thousand small blocks instead of two
per block. Big blocks are written past the page cache (``protocol.directio``)
and fsynced each on its own, several at once in worker threads, so the network
and the disk keep overlapping. Where ``syncfs`` does not exist (not Linux), each file and folder is
fsynced instead. Hashing and all file I/O run in worker threads; the event loop
never waits on the disk.

One process owns a root: temp files left in ``root/tmp/`` by an earlier run are
deleted when a store is opened on it.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from protocol import directio, failpoints
from server.blockstore import BadBlock, BlockNotFound, StoreUnavailable, check_hash
from server.coalesce import Coalescer

__all__ = ["FileBlockStore"]

_HEX = frozenset("0123456789abcdef")
_TMP = "tmp"
_TMP_SUFFIX = ".tmp"

# Tokens of FileBlockStore instances open in this process: opening a second
# store on the same root must not delete temp files the first is writing.
_live_tokens: set[str] = set()
_live_lock = threading.Lock()


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and all(c in _HEX for c in name)


_GROUP_MAX = 256 * 1024  # bigger blocks are not worth grouping: flushing them is the cost
_INLINE_HASH = 64 * 1024  # smaller blocks are hashed on the event loop (cheaper than a thread hop)


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlockStore:
    """Blocks as files under ``root``. See the module docstring for the layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp = self.root / _TMP
        self._token = secrets.token_hex(8)
        self._counter = 0
        self._group = Coalescer(self._put_many, max_items=256)
        with _live_lock:
            _live_tokens.add(self._token)
        try:
            self._prepare()
        except OSError:
            pass  # check() reports it with a clear message; put/get fail with StoreUnavailable

    def __repr__(self) -> str:
        return f"FileBlockStore({str(self.root)!r})"

    @property
    def url(self) -> str:
        return f"file:{self.root}"

    # -- sync helpers, run in worker threads -------------------------------

    def _prepare(self) -> None:
        """Create root and root/tmp, and delete temp files no live store in this process owns."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        if not (self.root / "ff").is_dir():
            for i in range(256):
                (self.root / f"{i:02x}").mkdir(exist_ok=True)
            _fsync_dir(self.root)
        with _live_lock:
            live = set(_live_tokens)
        with os.scandir(self.tmp) as it:
            for entry in it:
                token = entry.name.split(".", 1)[0]
                if token in live:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        continue
                    os.unlink(entry.path)
                except OSError:
                    pass

    def _path(self, h: bytes) -> Path:
        x = h.hex()
        return self.root / x[:2] / x

    def _unavailable(self, action: str, e: OSError) -> StoreUnavailable:
        reason = e.strerror or str(e)
        where = f" ({e.filename})" if e.filename else ""
        return StoreUnavailable(f"block store {self.url}: cannot {action}: {reason}{where}")

    def _write_tmp(self, h: bytes, data: bytes | memoryview, fsync: bool) -> Path:
        self._counter += 1  # a race here only risks a duplicate name, and O_EXCL catches that
        tmp = self.tmp / f"{self._token}.{h.hex()[:16]}.{self._counter}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            if fsync and directio.write_new(tmp, data, flags, 0o600):  # a big block: past the page cache
                return tmp
        except BaseException:
            _unlink_quietly(tmp)
            raise
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    def _sync_fs(self) -> None:
        assert _syncfs is not None
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(self.root))
        finally:
            os.close(fd)

    def _put_many_sync(
        self, items: list[tuple[bytes, bytes | memoryview]], grouped: bool = True
    ) -> list[OSError | None]:
        """Store verified blocks as one group (see the module docstring): each
        result is None once that block is durable under its name."""
        out: list[OSError | None] = [None] * len(items)
        staged: list[tuple[int, Path, Path]] = []
        taken: set[bytes] = set()
        grouped = grouped and _syncfs is not None
        for i, (h, data) in enumerate(items):
            final = self._path(h)
            if h in taken or final.exists():  # (a final name only ever holds a whole, durable block)
                continue
            try:
                staged.append((i, self._write_tmp(h, data, fsync=not grouped), final))
            except OSError as e:
                out[i] = e
                continue
            taken.add(h)
        if not staged:
            return out
        try:
            failpoints.hit("server.block.tmp")
            if grouped:
                self._sync_fs()  # every temp file's bytes are on disk
            for _, tmp, final in staged:
                os.replace(tmp, final)  # atomic; a concurrent put of the same block writes identical bytes
            if grouped:
                self._sync_fs()  # and so are the new names
            else:
                for folder in {final.parent for _, _, final in staged}:
                    _fsync_dir(folder)
        except OSError as e:
            for i, tmp, _ in staged:
                out[i] = e
                _unlink_quietly(tmp)
        return out

    def _get_sync(self, h: bytes) -> bytes:
        fd = os.open(self._path(h), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            if size > _GROUP_MAX:  # written past the page cache: read the same way
                return directio.pread(fd, size, 0)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)

    def _delete_sync(self, h: bytes) -> None:
        try:
            os.unlink(self._path(h))
        except FileNotFoundError:
            return
        _fsync_dir(self._path(h).parent)

    def _list_top(self) -> list[str]:
        with os.scandir(self.root) as it:
            return sorted(e.name for e in it if _is_hex(e.name, 2) and e.is_dir(follow_symlinks=False))

    def _list_under(self, ab: str) -> list[bytes]:
        try:
            names = os.listdir(self.root / ab)
        except FileNotFoundError:
            return []
        return [bytes.fromhex(n) for n in names if _is_hex(n, 64) and n.startswith(ab)]

    def _check_sync(self) -> None:
        self._prepare()
        probe = self.tmp / f"{self._token}.check.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)

    # -- BlockStore ----------------------------------------------------------

    async def put(self, h: bytes, data: bytes | memoryview) -> None:
        check_hash(h)
        if len(data) <= _INLINE_HASH:
            digest = hashlib.sha256(data).digest()
        else:
            digest = await asyncio.to_thread(lambda: hashlib.sha256(data).digest())
        if digest != h:
            raise BadBlock(
                f"block {h.hex()}: the {len(data)} bytes sent do not hash to that name (corrupt upload?)"
            )
        if len(data) > _GROUP_MAX:  # big blocks: each flushed on its own, several at once
            (failed,) = await asyncio.to_thread(self._put_many_sync, [(h, data)], False)
        else:
            failed = await self._group((h, data))
        if failed is not None:
            raise self._unavailable(f"write block {h.hex()}", failed) from failed

    async def _put_many(self, items: list[tuple[bytes, bytes | memoryview]]) -> list[OSError | None]:
        return await asyncio.to_thread(self._put_many_sync, items)

    async def get(self, h: bytes) -> bytes:
        check_hash(h)
        try:
            return await asyncio.to_thread(self._get_sync, h)
        except FileNotFoundError:
            raise BlockNotFound(f"block {h.hex()} is not in {self.url}") from None
        except OSError as e:
            raise self._unavailable(f"read block {h.hex()}", e) from e

    async def has(self, h: bytes) -> bool:
        check_hash(h)
        try:
            return await asyncio.to_thread(os.path.isfile, self._path(h))
        except OSError as e:  # pragma: no cover - isfile swallows most errors
            raise self._unavailable(f"stat block {h.hex()}", e) from e

    async def delete(self, h: bytes) -> None:
        check_hash(h)
        try:
            await asyncio.to_thread(self._delete_sync, h)
        except OSError as e:
            raise self._unavailable(f"delete block {h.hex()}", e) from e

    async def iter_hashes(self) -> AsyncIterator[bytes]:
        try:
            tops = await asyncio.to_thread(self._list_top)
        except OSError as e:
            raise self._unavailable("list blocks", e) from e
        for ab in tops:
            try:
                hashes = await asyncio.to_thread(self._list_under, ab)
            except OSError as e:
                raise self._unavailable("list blocks", e) from e
            for h in hashes:
                yield h

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self._check_sync)
        except OSError as e:
            raise self._unavailable("write to the block directory", e) from e

    async def close(self) -> None:
        with _live_lock:
            _live_tokens.discard(self._token)
