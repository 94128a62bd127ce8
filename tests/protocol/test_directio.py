"""Direct I/O (protocol.directio): a block written directly reads back exactly
at any offset and length, whichever way it is read; reads take the page cache
when it holds the range; the aligned buffers are reused and bounded."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest

from protocol import directio


def test_direct_reads_at_any_offset_and_length_come_back_exactly(tmp_path: Path) -> None:
    rnd = random.Random(7)
    size = 9 * 1024 * 1024 + 123
    data = rnd.randbytes(size)
    path = tmp_path / "f"
    assert directio.write_new(path, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) == bool(
        directio.O_DIRECT
    )
    if not directio.O_DIRECT:
        path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        cuts = [*rnd.sample(range(1, size), 40), 5, 4096, 4100, 8192]  # tiny reads and exact pages too
        for a, b in itertools.pairwise(sorted({0, size, *cuts})):
            assert directio.pread(fd, b - a, a) == data[a:b]
            assert directio.pread_once(fd, b - a, a) == data[a:b]
        assert directio.pread(fd, 100, size - 10) == data[-10:]  # past the end: what there is
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [4096, 4097, 1024 * 1024 + 1])
def test_write_new_creates_the_whole_file_and_no_more(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "block"
    assert directio.write_new(path, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) == bool(
        directio.O_DIRECT
    )
    if directio.O_DIRECT:
        assert path.read_bytes() == data  # not padded to the page
        assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):  # the caller's flags hold: never overwrites
        directio.write_new(path, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def test_without_o_direct_everything_falls_back_to_ordinary_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the system has no O_DIRECT: nothing is written directly, nothing
    created, reads still answer."""
    from client.fs import OsDisk

    monkeypatch.setattr(directio, "O_DIRECT", 0)
    data = random.Random(3).randbytes(3 * 4096 + 17)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        OsDisk.pwrite_big(fd, data, 5)
        assert directio.pread(fd, len(data), 5) == data
        assert directio.pread_once(fd, len(data), 5) == data
        assert directio.pread_cached(fd, len(data), 5) == data
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(5) + data
    assert not directio.write_new(tmp_path / "g", data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    assert not (tmp_path / "g").exists()


def test_pread_cached_takes_what_the_page_cache_holds_and_reads_the_rest_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file just written through the page cache is read from it, with no
    direct read (which would go to the disk, and first wait for the file's dirty
    pages to be written); a file written past the page cache is read directly.
    Either way the bytes at any offset come back exactly."""
    rnd = random.Random(11)
    data = rnd.randbytes(3 * 1024 * 1024 + 77)
    cached, direct = tmp_path / "cached", tmp_path / "direct"
    cached.write_bytes(data)
    assert directio.write_new(direct, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) == bool(
        directio.O_DIRECT
    )
    if not directio.O_DIRECT:
        direct.write_bytes(data)
    direct_reads: list[int] = []  # descriptors opened for a direct read
    real_twin = directio._twin

    def counted(fd: int, flags: int) -> int | None:
        direct_reads.append(fd)
        return real_twin(fd, flags)

    monkeypatch.setattr(directio, "_twin", counted)
    spans = [
        (0, 4096),
        (5, 1024 * 1024),
        (4095, 2 * 1024 * 1024 + 3),
        (len(data) - 9000, 9000),
        (len(data) - 10, 100),
    ]
    for path, from_cache in ((cached, True), (direct, False)):
        fd = os.open(path, os.O_RDONLY)
        try:
            del direct_reads[:]
            for offset, size in spans:
                assert directio.pread_cached(fd, size, offset) == data[offset : offset + size]
        finally:
            os.close(fd)
        if directio.O_DIRECT:
            assert (direct_reads == []) == from_cache, (path.name, direct_reads)


def test_aligned_buffers_are_used_again_and_the_spares_let_go_once_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sixteen blocks written at once take sixteen buffers; the next sixteen
    reuse them (no fresh mapping: a fresh one costs a fault per page); once
    idle, all but a few are unmapped."""
    import mmap
    import threading

    made: list[int] = []
    real = mmap.mmap

    def counting(*args: object, **kwargs: object) -> mmap.mmap:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    from protocol.buffers import Keeper

    fresh = Keeper(
        directio._aligned, directio._KEEP, directio._FLOOR, idle_s=3600.0, keep=directio._KEEP_IDLE
    )
    monkeypatch.setattr(directio, "_buffers", fresh)  # (its timer would fire in an hour: driven by hand)
    monkeypatch.setattr(directio.mmap, "mmap", counting)
    inside = threading.Barrier(directio._KEEP)

    def use() -> None:
        with directio._buffer(1024 * 1024) as view:
            view[:3] = b"abc"
            inside.wait(10)  # all sixteen hold one at once

    for _round in range(2):
        threads = [threading.Thread(target=use) for _ in range(directio._KEEP)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(made) == directio._KEEP  # the second round took the same sixteen
    assert fresh.held() == directio._KEEP
    fresh._last -= 3600.0  # an hour with no block
    fresh._on_timer()
    assert fresh.held() == directio._KEEP_IDLE
