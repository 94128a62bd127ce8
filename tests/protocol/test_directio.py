"""Direct I/O (protocol.directio): blocks at arbitrary offsets and sizes, in
any order, read back exactly as written, whether a block has whole pages (written
directly) or not (written through the page cache)."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest

from protocol import directio


def test_blocks_at_any_offset_in_any_order_read_back_exactly(tmp_path: Path) -> None:
    rnd = random.Random(7)
    size = 9 * 1024 * 1024 + 123
    data = rnd.randbytes(size)
    cuts = [*rnd.sample(range(1, size), 40), 5, 4096, 4100, 8192]  # tiny blocks and exact pages too
    bounds = sorted({0, size, *cuts})
    pieces = list(itertools.pairwise(bounds))
    rnd.shuffle(pieces)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        direct = 0
        for a, b in pieces:
            if directio.pwrite(fd, data[a:b], a):
                direct += 1
            else:
                os.pwrite(fd, data[a:b], a)
        os.fsync(fd)
        if directio.O_DIRECT:  # every block with a whole page in it went directly
            whole = [1 for a, b in pieces if -(-a // 4096) * 4096 + 4096 <= b]
            assert direct == len(whole) >= 30
        assert os.pread(fd, size, 0) == data
        for a, b in pieces:
            assert directio.pread(fd, b - a, a) == data[a:b]
        assert directio.pread(fd, 8192, size - 100) == data[-100:]  # short at the end of the file
        assert directio.pread(fd, 8192, size + 10) == b""
    finally:
        os.close(fd)
    assert path.read_bytes() == data


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
    created, reads still answer; the client's big-block write still writes."""
    from client.fs import OsDisk

    monkeypatch.setattr(directio, "O_DIRECT", 0)
    data = random.Random(3).randbytes(3 * 4096 + 17)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert not directio.pwrite(fd, data, 5)
        OsDisk.pwrite_big(fd, data, 5)
        assert directio.pread(fd, len(data), 5) == data
        assert directio.pread_once(fd, len(data), 5) == data
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(5) + data
    assert not directio.write_new(tmp_path / "g", data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    assert not (tmp_path / "g").exists()
