"""Moving whole files: upload as content-defined blocks, sending only what
the server lacks; download block by block into a staged temp file that is
verified, fsynced and renamed into place.

Both run under :class:`Remote`, which reconnects with backoff when the
connection drops and re-runs the operation: an upload re-asks which blocks
are missing (so it sends only those), a download fetches only blocks it has
not written yet, and a commit is retried under the same idempotency key (so
a retry never makes a second version).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import stat as stat_mod
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from client import fs
from client.clock import Clock, SystemClock
from client.home import Credentials
from client.transport import Connection, ConnectionLost, backoff_delays, connect
from protocol import failpoints
from protocol import messages as m
from protocol.chunking import chunk_stream
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import block_hash, content_hash

R = TypeVar("R")
Progress = Callable[[int], None]  # called with bytes just moved
BATCH = 8  # blocks per "which are missing?" query
HELD = 16  # blocks read but not yet sent, at most (bounds memory)
STAGING_PREFIX = ".ferry-tmp-"
Dial = Callable[[], Awaitable[Connection]]  # opens a connection (retrying while the server is away)


class BlockSource(Protocol):
    """Somewhere else to get a block before the server (LAN peers: ``client.lan``)."""

    async def get_block(
        self, h: bytes, from_server: Callable[[], Awaitable[bytes | memoryview]]
    ) -> bytes | memoryview:
        """Block ``h``, hash-checked (wherever it came from), or an error."""
        ...

    async def from_peers(self, h: bytes) -> bytes | memoryview | None:
        """Block ``h`` from a peer, hash-checked, or None if none has it."""
        ...

    def first_block(self, content: bytes, count: int) -> int:
        """Where to start fetching a file of ``count`` blocks (then round to it)."""
        ...

    def holding(self, h: bytes, tmp: Path, offset: int, size: int) -> None:
        """Block ``h`` is now at ``offset`` of the half-fetched ``tmp`` (peers may have it)."""

    def released(self, tmp: Path) -> None:
        """``tmp`` is gone or about to be renamed: none of its blocks are there any more."""


def block_getter(
    conn: Connection, source: BlockSource | None
) -> Callable[[bytes], Awaitable[bytes | memoryview]]:
    """``conn.get_block``, trying ``source`` first when there is one."""
    if source is None:
        return conn.get_block
    return lambda h: source.get_block(h, lambda: conn.get_block(h))


class Remote:
    """A connection that comes back: runs operations, reconnecting with
    exponential backoff and jitter for up to ``retry_for`` seconds."""

    def __init__(self, creds: Credentials, retry_for: float = 60.0, *, dial: Dial | None = None,
                 clock: Clock | None = None) -> None:  # fmt: skip
        self.creds = creds
        self.retry_for = retry_for
        self.dial = dial or (lambda: connect(creds.server, creds.token, retry_for))
        self.clock = clock or SystemClock()
        self.conn: Connection | None = None
        self.on_changed: Callable[[m.Changed | m.NamespacesChanged | m.Incoming], None] | None = (
            None  # pushes
        )
        self.on_closed: Callable[[], None] | None = None
        self._connecting = asyncio.Lock()  # two operations starting at once share one connection

    async def connection(self) -> Connection:
        async with self._connecting:
            if self.conn is None:
                conn = await self.dial()
                conn.on_changed = self.on_changed
                conn.on_closed = self.on_closed
                self.conn = conn
            return self.conn

    async def run(self, op: Callable[[Connection], Awaitable[R]]) -> R:
        """Run ``op``, again after a dropped connection or while the server
        answers ``unavailable`` (its database or block store is away for a
        moment): operations are idempotent, commits carry their key."""
        deadline = self.clock.monotonic() + self.retry_for
        delays = backoff_delays()
        while True:
            try:
                return await op(await self.connection())
            except ConnectionLost:
                if self.conn is not None:
                    with contextlib.suppress(Exception):
                        await self.conn.close()
                    self.conn = None
                delay = next(delays)
                if self.clock.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
            except ProtocolError as e:
                delay = next(delays)
                if e.code != ErrorCode.UNAVAILABLE or self.clock.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


# --- upload --------------------------------------------------------------------------


@dataclass
class _Plan:
    hashes: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    sent: int = 0  # block bytes actually sent (the rest the server had)


def _blocks(path: Path) -> Generator[tuple[int, int, bytes, bytes], None, None]:
    with fs.disk().open_read(path) as f:
        for b in chunk_stream(f):
            yield b.offset, b.length, b.hash, bytes(b.data)


async def _send_blocks(conn: Connection, src: Path, plan: _Plan, progress: Progress) -> None:
    """Chunk ``src`` (in a worker thread), ask which blocks are missing in
    batches, and send those; memory is bounded by ``HELD`` blocks."""
    held = asyncio.Semaphore(HELD)
    batch: list[tuple[int, int, bytes, bytes]] = []

    async def send_batch(items: list[tuple[int, int, bytes, bytes]]) -> None:
        count = len(items)
        try:
            reply = await conn.call(lambda i: m.QueryBlocks(i, [h for _, _, h, _ in items]), m.BlocksMissing)
            missing = set(reply.missing)
            await asyncio.gather(*(conn.put_block(h, data) for _, _, h, data in items if h in missing))
            plan.sent += sum(len(data) for _, _, h, data in items if h in missing)
            progress(sum(length for _, length, _, _ in items))
        finally:
            items.clear()  # a failed task's traceback must not pin the bytes
            for _ in range(count):
                held.release()

    it = _blocks(src)
    sentinel = (-1, 0, b"", b"")
    try:
        # the first failure cancels the other batches and stops the reading at once
        async with asyncio.TaskGroup() as group:
            while True:
                await held.acquire()
                item = await fs.disk().run(next, it, sentinel)
                if item is sentinel:
                    held.release()
                    break
                offset, length, h, _ = item
                plan.offsets.append(offset)
                plan.sizes.append(length)
                plan.hashes.append(h)
                batch.append(item)
                if len(batch) >= BATCH:
                    group.create_task(send_batch(batch))
                    batch = []
            if batch:
                group.create_task(send_batch(batch))
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    finally:
        it.close()


@dataclass(frozen=True)
class KnownBlocks:
    """A file's blocks as a scan found them, for the file with this (size, mtime_ns, inode)."""

    stat: tuple[int, int, int]
    offsets: list[int]
    sizes: list[int]
    hashes: list[bytes]


def _query(req_id: int, hashes: list[bytes]) -> m.QueryBlocks:
    return m.QueryBlocks(req_id, hashes)


def _block_at(fd: int, offset: int, size: int, expected: bytes, big: bool = False) -> bytes | None:
    """The block at ``offset`` of an open file, or None if it is not (any more)
    ``expected``; ``big``: of a big file, read without keeping it in the page cache."""
    disk = fs.disk()
    data = disk.pread_big(fd, size, offset) if big else disk.pread(fd, size, offset)
    return data if len(data) == size and block_hash(data) == expected else None


def _read_block(fd: int, offset: int, size: int, expected: bytes, src: Path) -> bytes:
    data = _block_at(fd, offset, size, expected)
    if data is None:
        raise ProtocolError(ErrorCode.CONFLICT, f"{src} changed while uploading; it will be sent again")
    return data


def _read_known(fd: int, offset: int, size: int, expected: bytes, src: Path, stat: tuple[int, int, int]
                ) -> tuple[bytes, bool]:  # fmt: skip
    """The block at ``offset`` of a file a scan just chunked, and whether it
    was hash-checked here: only when the file is no longer as the scan saw it
    (``stat``: size, mtime and inode, taken after the read). The server hashes
    every block it is sent, so an unchecked block that is not ``expected`` any
    more is refused there, not stored (see :func:`_send_known`)."""
    disk = fs.disk()
    data = disk.pread(fd, size, offset)
    st = disk.stat(src)
    if len(data) == size and (st.st_size, st.st_mtime_ns, st.st_ino) == stat:
        return data, False
    return _read_block(fd, offset, size, expected, src), True


async def _send_known(conn: Connection, src: Path, plan: _Plan, progress: Progress,
                      stat: tuple[int, int, int]) -> None:  # fmt: skip
    """Ask which of the plan's blocks the server lacks, then read (by offset)
    and send those, ``HELD`` at a time. A block is hashed again only if the
    file changed since the scan (``stat``); a block the server refuses as not
    matching its hash means the file changed under the read."""
    missing: set[bytes] = set()
    unique = list(dict.fromkeys(plan.hashes))
    for i in range(0, len(unique), 1000):
        part = unique[i : i + 1000]
        reply = await conn.call(functools.partial(_query, hashes=part), m.BlocksMissing)
        missing.update(reply.missing)
    disk = fs.disk()
    fd = disk.open(src, os.O_RDONLY)
    try:
        slots = asyncio.Semaphore(HELD)
        first: dict[bytes, tuple[int, int]] = {}
        for offset, size, h in zip(plan.offsets, plan.sizes, plan.hashes, strict=True):
            if h in missing:
                first.setdefault(h, (offset, size))
            else:
                progress(size)

        async def one(h: bytes, offset: int, size: int) -> None:
            async with slots:
                data, checked = await disk.run(_read_known, fd, offset, size, h, src, stat)
                try:
                    await conn.put_block(h, data)
                except ProtocolError as e:
                    if e.code != ErrorCode.BAD_BLOCK or checked:
                        raise
                    raise ProtocolError(
                        ErrorCode.CONFLICT, f"{src} changed while uploading; it will be sent again"
                    ) from None
                plan.sent += size
                progress(size)

        await gather_all([one(h, offset, size) for h, (offset, size) in first.items()])
    finally:
        disk.close(fd)


async def _resend(conn: Connection, src: Path, plan: _Plan, missing: list[str]) -> None:
    """The server lost or never got some blocks the commit names: read them
    again by offset and send them."""
    want = {bytes.fromhex(h) for h in missing}
    with fs.disk().open_read(src) as f:
        for offset, size, h in zip(plan.offsets, plan.sizes, plan.hashes, strict=True):
            if h in want:
                f.seek(offset)
                data = f.read(size)
                if block_hash(data) != h:
                    raise ProtocolError(
                        ErrorCode.CONFLICT, f"{src} changed while uploading; run the command again"
                    )
                await conn.put_block(h, data)
                plan.sent += size
                want.discard(h)


async def stat_or_none(conn: Connection, path: str) -> m.Entry | None:
    try:
        reply = await conn.call(lambda i: m.Stat(i, path), m.EntryReply)
    except ProtocolError as e:
        if e.code == ErrorCode.NOT_FOUND:
            return None
        raise
    return reply.entry  # type: ignore[no-any-return]


async def send_file(
    remote: Remote, src: Path, progress: Progress, known: KnownBlocks | None = None
) -> tuple[_Plan, os.stat_result]:
    """Send the blocks of ``src`` the server lacks; returns the block plan and
    the stat the content belongs to (unchanged from start to end). ``known``:
    the file's blocks as a scan just found them (for that stat), so the file
    is not chunked a second time: only the missing blocks are read, each
    hash-checked as it is read."""
    st = fs.disk().stat(src)
    if not stat_mod.S_ISREG(st.st_mode):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{src} is not a regular file")
    plan = _Plan()
    if known is not None and known.stat != (st.st_size, st.st_mtime_ns, st.st_ino):
        known = None  # not the file the scan saw: chunk it afresh

    async def send(conn: Connection) -> None:
        if known is not None:
            plan.offsets, plan.sizes, plan.hashes = list(known.offsets), list(known.sizes), list(known.hashes)
            await _send_known(conn, src, plan, progress, known.stat)
            return
        plan.hashes, plan.offsets, plan.sizes = [], [], []  # a retry re-chunks; only missing blocks move
        await _send_blocks(conn, src, plan, progress)

    await remote.run(send)
    after = fs.disk().stat(src)
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino) or sum(
        plan.sizes
    ) != st.st_size:
        raise ProtocolError(ErrorCode.CONFLICT, f"{src} changed while uploading; it will be sent again")
    return plan, st


async def commit_blocks(
    conn: Connection, src: Path, dst: str, plan: _Plan, st: os.stat_result, parent: int | None, key: str,
    ns: int | None = None,
) -> m.Committed:  # fmt: skip
    """Commit ``dst`` as the uploaded blocks, based on version ``parent``;
    re-sends blocks the server reports missing. A stale parent raises CONFLICT."""
    request = functools.partial(m.Commit, key=key, path=dst, parent=parent, size=st.st_size,
                                mtime_ns=st.st_mtime_ns, blocks=plan.hashes,
                                executable=bool(st.st_mode & stat_mod.S_IXUSR), ns=ns)  # fmt: skip
    for _ in range(3):
        try:
            return await conn.call(request, m.Committed)  # type: ignore[no-any-return]
        except ProtocolError as e:
            if e.code != ErrorCode.MISSING_BLOCKS:
                raise
            await _resend(conn, src, plan, (e.detail or {}).get("missing", []))
    raise ProtocolError(ErrorCode.MISSING_BLOCKS, f"the server keeps losing blocks of {dst}; try again")


async def upload(remote: Remote, src: Path, dst: str, progress: Progress) -> tuple[m.Committed, int]:
    """Upload ``src`` to ``dst``, overwriting what is there (``ferry put``);
    returns the commit and how many block bytes had to be sent."""
    plan, st = await send_file(remote, src, progress)

    async def commit(conn: Connection) -> m.Committed:
        for _ in range(5):
            current = await stat_or_none(conn, dst)
            try:  # a fresh key per attempt: a conflict means someone wrote meanwhile; overwrite theirs
                return await commit_blocks(conn, src, dst, plan, st, current.version if current else None,
                                           f"put-{uuid.uuid4()}")  # fmt: skip
            except ProtocolError as e:
                if e.code != ErrorCode.CONFLICT:
                    raise
        raise ProtocolError(ErrorCode.CONFLICT, f"{dst} keeps changing on the server; try again")

    return await remote.run(commit), plan.sent


# --- download ------------------------------------------------------------------------


WRITEBACK_OVER = 8 * 1024 * 1024  # bytes: a fetched file this big is written out to disk as it arrives


def _write_at(
    fd: int, data: bytes | memoryview, offset: int, expected: bytes, checked: bool = False, big: bool = False
) -> None:
    if not checked and block_hash(data) != expected:
        raise ProtocolError(ErrorCode.BAD_BLOCK, f"block {expected.hex()[:12]} arrived corrupted")
    disk = fs.disk()
    if big:  # the disk starts on it now rather than all at once in the final fsync
        disk.pwrite_big(fd, data, offset)
    else:
        disk.pwrite(fd, data, offset)


@dataclass
class LocalCopy:
    """A local file whose blocks are known (an older version of the file being
    fetched): blocks it shares with the new version are copied from it instead
    of the network, each hash-checked as it is read."""

    path: Path
    blocks: list[m.BlockRef]

    def offsets(self) -> dict[bytes, tuple[int, int]]:
        out: dict[bytes, tuple[int, int]] = {}
        at = 0
        for b in self.blocks:
            out.setdefault(b.hash, (at, b.size))
            at += b.size
        return out


def _read_checked(src: int, jobs: list[tuple[int, int, int, int, bytes]], big: bool
                  ) -> list[tuple[int, int, bytes]]:  # fmt: skip
    """For each job ``(index, at, size, to, expected)`` read the block at ``at``
    of a local file: ``(index, to, bytes)`` of those that are (still) the block
    expected; the others are left for the network."""
    out: list[tuple[int, int, bytes]] = []
    for i, at, size, to, expected in jobs:
        if (data := _block_at(src, at, size, expected, big)) is not None:
            out.append((i, to, data))
    return out


def _write_blocks(dst: int, blocks: list[tuple[int, int, bytes]], big: bool) -> None:
    disk = fs.disk()
    for _, to, data in blocks:
        if big:
            disk.pwrite_big(dst, data, to)
        else:
            disk.pwrite(dst, data, to)


def _staging(folder: Path, size: int, big: bool) -> tuple[Path, int]:
    """A new temp file of ``size`` bytes in ``folder``, open for writing (its
    space reserved first when ``big``)."""
    disk = fs.disk()
    tmp = folder / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    fd = disk.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if big:
            disk.preallocate(fd, size)
        disk.ftruncate(fd, size)
    except BaseException:
        disk.close(fd)
        with contextlib.suppress(FileNotFoundError):
            disk.unlink(tmp)
        raise
    return tmp, fd


def _order(source: BlockSource | None, content: bytes, count: int) -> list[int]:
    """The blocks of a file in the order to fetch them: from the block ``source``
    picks for this device (see :meth:`BlockSource.first_block`) round to it."""
    first = source.first_block(content, count) if source is not None and count else 0
    return [(first + k) % count for k in range(count)]


@dataclass
class Prefetched:
    """A temp file holding some blocks of a file another device is uploading
    (streaming sync): each hash-checked against the name the uploader gave it,
    which is worth something only once a commit names the same blocks
    (:func:`fetch` ``resume``)."""

    tmp: Path
    done: set[int]  # indexes of the blocks it holds


async def prefetch(
    blocks: list[m.BlockRef],
    folder: Path,
    source: BlockSource,
    have: Callable[[bytes], bool],
    stop: asyncio.Event,
    window: int = 8,
) -> Prefetched:
    """Fetch from LAN peers, into a new temp file in ``folder``, the blocks of
    a file not committed yet: only what a peer has (nothing from the server,
    which serves only committed blocks) and nothing this device ``have``s
    already (the fetch after the commit copies those). Once ``stop`` is set
    (the commit came: :func:`fetch` takes over) no more blocks are asked for
    and it returns what it has. The caller deletes the temp file if no commit
    of these blocks comes."""
    disk = fs.disk()
    size = sum(b.size for b in blocks)
    tmp, fd = _staging(folder, size, size >= WRITEBACK_OVER)
    done: set[int] = set()
    try:
        offsets = list(itertools_accumulate([b.size for b in blocks]))
        slots = asyncio.Semaphore(window)

        async def one(i: int) -> None:
            async with slots:
                ref = blocks[i]
                if stop.is_set() or have(ref.hash):
                    return
                data = await source.from_peers(ref.hash)
                if data is None:
                    return  # left for the fetch after the commit
                await disk.run(_write_at, fd, data, offsets[i], ref.hash, True, True)
                done.add(i)
                source.holding(ref.hash, tmp, offsets[i], ref.size)

        await gather_all([one(i) for i in _order(source, content_hash(b.hash for b in blocks), len(blocks))])
        return Prefetched(tmp, done)
    except BaseException:
        source.released(tmp)
        with contextlib.suppress(FileNotFoundError):
            disk.unlink(tmp)
        raise
    finally:
        disk.close(fd)


@dataclass
class Precopied:
    """A temp file holding a copy of a local file's blocks at their offsets,
    made while another device edits that file (its earliest hint, before it has
    read the new version): the new version, when its commit comes, needs only
    what is not at the same offset there already."""

    tmp: Path
    held: dict[int, bytes]  # offset -> hash of the block copied there
    local: LocalCopy  # what it was copied from (the fetch copies from it what moved)

    def resume(self, blocks: list[m.BlockRef]) -> Prefetched:
        """As a :class:`Prefetched` of ``blocks``: those already in place."""
        offsets = itertools_accumulate([b.size for b in blocks])
        held = (
            i for i, (at, b) in enumerate(zip(offsets, blocks, strict=True)) if self.held.get(at) == b.hash
        )
        return Prefetched(self.tmp, set(held))


async def precopy(local: LocalCopy, folder: Path) -> Precopied:
    """Copy ``local``'s blocks, each hash-checked as it is read, into a new temp
    file in ``folder``, written out to disk as it goes (see :func:`_copy_local`;
    a block that no longer reads right is left out). The caller deletes the
    temp file if no commit based on this version comes."""
    disk = fs.disk()
    size = sum(b.size for b in local.blocks)
    tmp, fd = _staging(folder, size, True)
    try:
        offsets = list(itertools_accumulate([b.size for b in local.blocks]))
        done: set[int] = set()
        await _copy_local(local, local.blocks, offsets, fd, done, lambda n: None, True)
        return Precopied(tmp, {offsets[i]: local.blocks[i].hash for i in done}, local)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            disk.unlink(tmp)
        raise
    finally:
        disk.close(fd)


async def fetch(
    remote: Remote,
    entry: m.Entry,
    folder: Path,
    progress: Progress,
    window: int = 8,
    local: LocalCopy | None = None,
    source: BlockSource | None = None,
    resume: Prefetched | None = None,
    also: Prefetched | None = None,
) -> Path:
    """Fetch ``entry`` into a new temp file in ``folder``: every block
    hash-checked, the content hash checked, mode and mtime set, fsynced.
    Blocks ``local`` already holds are copied from it (only the changed ones
    cross the network); the others come from ``source`` (LAN peers) when it
    has them, else from the server. ``resume``: a temp file already holding
    some of these blocks at their offsets (streaming sync, or a copy of the
    version this one replaces: :func:`precopy`), finished in place; ``also``:
    another such file (streaming sync's, beside a copy of the version before),
    whose blocks are moved into it and which is then deleted. The caller
    renames the result into place (see :func:`place`)."""
    if entry.kind != "file" or entry.blocks is None or entry.content_hash is None:
        raise ProtocolError(ErrorCode.IS_A_DIRECTORY, f"{entry.path} is a folder; give a file path")
    if content_hash(b.hash for b in entry.blocks) != entry.content_hash:
        raise ProtocolError(
            ErrorCode.BAD_ENTRY, f"{entry.path}: the server's block list does not match its hash"
        )
    disk = fs.disk()
    big = entry.size >= WRITEBACK_OVER
    if resume is not None:  # (matched by content hash: the same block list)
        tmp, done = resume.tmp, set(resume.done)
        fd = disk.open(tmp, os.O_WRONLY)
    else:
        (tmp, fd), done = _staging(folder, entry.size, big), set()
    try:
        if resume is not None:
            disk.ftruncate(fd, entry.size)  # a copy of the version before may be longer or shorter
        for i in done:
            progress(entry.blocks[i].size)
        offsets = list(itertools_accumulate([b.size for b in entry.blocks]))
        if also is not None:
            moved = [(i, offsets[i], entry.blocks[i].size) for i in sorted(also.done - done)]
            moved = moved[: await disk.run(_move_blocks, also.tmp, fd, moved, big)]
            for i, _, size in moved:
                done.add(i)
                progress(size)
        if local is not None:
            await _copy_local(local, entry.blocks, offsets, fd, done, progress, big)

        order = _order(source, entry.content_hash, len(entry.blocks))

        async def fetch_all(conn: Connection) -> None:
            slots = asyncio.Semaphore(window)
            get_block = block_getter(conn, source)

            async def one(i: int) -> None:
                async with slots:
                    ref = entry.blocks[i]  # type: ignore[index]
                    data = await get_block(ref.hash)
                    await disk.run(_write_at, fd, data, offsets[i], ref.hash, source is not None, big)
                    done.add(i)
                    failpoints.hit("client.download.block")
                    progress(ref.size)
                    if source is not None:
                        source.holding(ref.hash, tmp, offsets[i], ref.size)

            await gather_all([one(i) for i in order if i not in done])

        await remote.run(fetch_all)
        mode = 0o755 if entry.executable else 0o644
        await disk.run(_seal, fd, mode, entry.mtime_ns, tmp)
        fd = -1
        return tmp
    finally:
        if source is not None:
            source.released(tmp)
            if also is not None:
                source.released(also.tmp)
        if also is not None:
            with contextlib.suppress(FileNotFoundError):
                disk.unlink(also.tmp)
        if fd >= 0:
            disk.close(fd)
            with contextlib.suppress(FileNotFoundError):
                disk.unlink(tmp)


def _move_blocks(src: Path, dst: int, blocks: list[tuple[int, int, int]], big: bool) -> int:
    """Copy each block ``(index, offset, size)`` from the temp file ``src`` (where
    it was written, hash-checked, at the same offset) into ``dst``; how many
    were (the rest, if ``src`` cannot be read, are left for the network)."""
    disk = fs.disk()
    moved = 0
    try:
        fd = disk.open(src, os.O_RDONLY)
    except OSError:
        return 0
    try:
        for _, at, size in blocks:
            data = disk.pread_big(fd, size, at) if big else disk.pread(fd, size, at)
            if len(data) != size:
                break
            _write_blocks(dst, [(moved, at, data)], big)
            moved += 1
    except OSError:
        pass
    finally:
        disk.close(fd)
    return moved


COPY_GROUP = 8 * 1024 * 1024  # bytes of kept blocks read and checked at a time


async def _copy_local(
    local: LocalCopy, blocks: list[m.BlockRef], offsets: list[int], fd: int, done: set[int], progress: Progress,
    big: bool,
) -> None:  # fmt: skip
    """Fill in the blocks ``local`` has (marking them done); a block that cannot
    be read or no longer hashes right is left for the network. Two steps
    overlap on two threads: one group of blocks is read and hash-checked while
    the group before it is written (writes to one file gain nothing from more
    threads). Memory: two groups of about :data:`COPY_GROUP`."""
    have = local.offsets()
    groups: list[list[tuple[int, int, int, int, bytes]]] = []
    size = 0
    for i, ref in enumerate(blocks):
        if ref.hash in have and i not in done:
            if not groups or size >= COPY_GROUP:
                groups.append([])
                size = 0
            groups[-1].append((i, *have[ref.hash], offsets[i], ref.hash))
            size += ref.size
    if not groups:
        return
    disk = fs.disk()
    try:
        src = disk.open(local.path, os.O_RDONLY)
    except OSError:
        return
    writing: asyncio.Future[None] | None = None
    written: list[tuple[int, int, bytes]] = []  # what ``writing`` writes
    try:
        for group in [*groups, None]:  # None: a last turn to wait for the last write
            checked = await disk.run(_read_checked, src, group, big) if group is not None else []
            if writing is not None:
                await asyncio.shield(writing)  # cancelled meanwhile: still awaited below
                done.update(i for i, _, _ in written)
                progress(sum(len(data) for _, _, data in written))
                writing = None
            if checked:
                writing, written = asyncio.ensure_future(disk.run(_write_blocks, fd, checked, big)), checked
    except OSError:
        pass  # the rest comes from the server
    finally:
        if writing is not None and not writing.done():
            await asyncio.wait([writing])  # cancelled: the file is closed only after its last write
        disk.close(src)


def _seal(fd: int, mode: int, mtime_ns: int, tmp: Path) -> None:
    disk = fs.disk()
    try:
        disk.fchmod(fd, mode & ~UMASK)
        disk.fsync(fd)
    finally:
        disk.close(fd)
    if mtime_ns:
        disk.utime(tmp, (mtime_ns, mtime_ns))


RELEASE_LATER_OVER = 64 * 1024 * 1024  # bytes: a replaced file this big is deleted after the rename


def place(tmp: Path, dest: Path, aside: Path | None = None) -> Path | None:
    """Atomically rename a fetched file into place and make the rename durable.

    Replacing a big file frees its blocks inside the rename, about a second per
    GiB here, before the new file shows. Given ``aside`` (a free name in the
    staging folder), a file being replaced that is big keeps its blocks under
    that name, which is returned: the caller deletes it after, while the new
    file is already in place (a crash leaves it to the staging clean-up)."""
    disk = fs.disk()
    kept = None
    if aside is not None:
        with contextlib.suppress(OSError):  # no hard links here: freed in the rename, as before
            info = disk.lstat(dest)
            if stat_mod.S_ISREG(info.st_mode) and info.st_size >= RELEASE_LATER_OVER:
                disk.link(dest, aside)
                kept = aside
    try:
        disk.replace(tmp, dest)
        disk.fsync_dir(dest.parent)
    except BaseException:
        if kept is not None:
            with contextlib.suppress(OSError):
                disk.unlink(kept)
        raise
    return kept


async def download(remote: Remote, entry: m.Entry, dest: Path, progress: Progress) -> None:
    """``ferry get``: fetch beside ``dest`` and rename into place; ``dest`` is never half-written."""
    tmp = await fetch(remote, entry, dest.parent, progress)
    try:
        await fs.disk().run(place, tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fs.disk().unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def itertools_accumulate(sizes: list[int]) -> Iterator[int]:
    """Start offsets of blocks of these sizes."""
    offset = 0
    for s in sizes:
        yield offset
        offset += s


async def gather_all(coros: list[Awaitable[Any]]) -> None:
    """Run all; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
