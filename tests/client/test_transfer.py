"""The download's disk steps on a real filesystem: copying kept blocks from
the old copy (each checked as it is read), and placing the fetched file."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from client import durable, transfer
from client.fs import OsDisk
from protocol import messages as m
from protocol.hashing import block_hash


def _fd(path: Path, flags: int = os.O_RDONLY) -> int:
    return os.open(path, flags | os.O_CREAT, 0o600)


@pytest.mark.parametrize("big", [False, True])  # True: read and written past the page cache
def test_kept_blocks_are_copied_only_if_they_still_hash_right(tmp_path: Path, big: bool) -> None:
    old = tmp_path / "old"
    old.write_bytes(b"x" * 100 + b"the block" + b"y" * 100)
    src, dst = _fd(old), _fd(tmp_path / "new", os.O_RDWR)
    try:
        os.pwrite(dst, b"-" * 60, 0)
        jobs = [
            (0, 100, 9, 5, block_hash(b"the block")),
            (1, 0, 9, 20, block_hash(b"the block")),  # the old copy no longer holds that block there
            (2, 195, 9, 40, block_hash(b"yyyyy")),  # the old copy is shorter than it was
            (3, 100, 9, 50, block_hash(b"the block")),
        ]
        checked = transfer._read_checked(src, jobs, big)
        assert [(i, to) for i, to, _ in checked] == [(0, 5), (3, 50)]
        transfer._write_blocks(dst, checked, big)
        assert os.pread(dst, 60, 0) == b"-" * 5 + b"the block" + b"-" * 36 + b"the block" + b"-"
    finally:
        os.close(src)
        os.close(dst)


def test_copy_from_the_old_version_in_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept blocks go in groups (read and checked while the group before is
    written); a block changed in the old file is left for the network."""
    monkeypatch.setattr(transfer, "COPY_GROUP", 10)
    blocks = [bytes([65 + k]) * (5 + k) for k in range(7)]
    old = tmp_path / "old"
    old.write_bytes(b"".join(blocks[:6]))
    with open(old, "r+b") as f:
        f.seek(5 + 6)  # blocks[2] no longer hashes right there
        f.write(b"?")
    refs = [m.BlockRef(block_hash(b), len(b)) for b in blocks]
    local = transfer.LocalCopy(old, refs[:6])
    offsets = list(transfer.itertools_accumulate([r.size for r in refs]))
    fd = _fd(tmp_path / "new", os.O_RDWR)
    done: set[int] = set()
    progress: list[int] = []
    try:
        os.ftruncate(fd, sum(r.size for r in refs))
        asyncio.run(transfer._copy_local(local, refs, offsets, fd, done, progress.append, big=False))
        assert done == {0, 1, 3, 4, 5}
        assert sum(progress) == sum(len(blocks[i]) for i in done) and len(progress) > 1
        for i in done:
            assert os.pread(fd, refs[i].size, offsets[i]) == blocks[i]
        assert os.pread(fd, refs[2].size, offsets[2]) == bytes(refs[2].size)  # not written
    finally:
        os.close(fd)


def test_a_copy_made_before_the_commit_counts_only_blocks_at_their_offset(tmp_path: Path) -> None:
    """Edit hints: :func:`transfer.precopy` copies the version held (a block
    that no longer hashes right is left out), and the new version's fetch
    counts as done only blocks that are at the same offset in that copy."""
    blocks = [bytes([65 + k]) * (5 + k) for k in range(4)]  # 5, 6, 7, 8 bytes
    old = tmp_path / "old"
    old.write_bytes(b"".join(blocks))
    with open(old, "r+b") as f:
        f.seek(5 + 6 + 7)  # blocks[3] changed on disk since it was synced
        f.write(b"?")
    refs = [m.BlockRef(block_hash(b), len(b)) for b in blocks]
    staging = tmp_path / "staging"
    staging.mkdir()
    copy = asyncio.run(transfer.precopy(transfer.LocalCopy(old, refs), staging))
    assert copy.held == {0: refs[0].hash, 5: refs[1].hash, 11: refs[2].hash}
    assert copy.tmp.read_bytes()[:18] == b"".join(blocks[:3])
    edited = m.BlockRef(block_hash(b"B" * 5 + b"!"), 6)
    new = [refs[0], edited, refs[2], refs[3], m.BlockRef(block_hash(b"tail"), 4)]  # in place, then appended
    assert copy.resume(new).done == {0, 2}
    shifted = [m.BlockRef(block_hash(b"+"), 1), *refs]  # an insertion at 0 moves every block
    assert copy.resume(shifted).done == set()


def test_blocks_fetched_early_are_moved_into_the_copy(tmp_path: Path) -> None:
    early = tmp_path / "early"
    early.write_bytes(b"\0" * 4 + b"abcd" + b"\0" * 4 + b"efgh")
    fd = _fd(tmp_path / "copy", os.O_RDWR)
    try:
        os.ftruncate(fd, 16)
        assert transfer._move_blocks(early, fd, [(1, 4, 4), (3, 12, 4)], big=False) == 2
        assert os.pread(fd, 16, 0) == b"\0" * 4 + b"abcd" + b"\0" * 4 + b"efgh"
        assert transfer._move_blocks(early, fd, [(3, 12, 4), (4, 16, 4)], big=False) == 1  # past its end
        assert transfer._move_blocks(tmp_path / "gone", fd, [(1, 4, 4)], big=False) == 0
    finally:
        os.close(fd)


def test_placing_over_a_big_file_keeps_its_blocks_aside_to_delete_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "RELEASE_LATER_OVER", 10)
    dest, tmp, aside = tmp_path / "f.bin", tmp_path / "tmp", tmp_path / "aside"
    dest.write_bytes(b"the old version")
    tmp.write_bytes(b"new")
    assert transfer.place(tmp, dest, aside) == aside
    assert dest.read_bytes() == b"new" and not tmp.exists()
    assert aside.read_bytes() == b"the old version"  # for the caller to delete

    small = tmp_path / "aside-2"
    tmp.write_bytes(b"newer")
    assert transfer.place(tmp, dest, small) is None  # 3 bytes: freed in the rename
    assert dest.read_bytes() == b"newer" and not small.exists()


def test_placing_where_hard_links_fail_still_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RELEASE_LATER_OVER", 1)

    def no_links(*_args: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(OsDisk, "link", staticmethod(no_links))
    dest, tmp = tmp_path / "f.bin", tmp_path / "tmp"
    dest.write_bytes(b"old")
    tmp.write_bytes(b"new")
    assert transfer.place(tmp, dest, tmp_path / "aside") is None
    assert dest.read_bytes() == b"new" and not (tmp_path / "aside").exists()


def test_a_failed_rename_takes_back_the_link_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "RELEASE_LATER_OVER", 1)
    dest, aside = tmp_path / "f.bin", tmp_path / "aside"
    dest.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        transfer.place(tmp_path / "gone", dest, aside)
    assert dest.read_bytes() == b"old" and not aside.exists()


def test_a_big_download_reserves_its_space_first(tmp_path: Path) -> None:
    """``preallocate`` reserves the blocks (where the filesystem can: ext4 here,
    tmpfs too) without changing what reads back: zeros, as after ``ftruncate``."""
    fd = _fd(tmp_path / "big", os.O_RDWR)
    try:
        durable.preallocate(fd, 0)  # nothing to reserve: no call
        assert os.fstat(fd).st_blocks == 0
        durable.preallocate(fd, 3 * 1024 * 1024)
        info = os.fstat(fd)
        assert info.st_size == 3 * 1024 * 1024
        assert info.st_blocks * 512 >= 3 * 1024 * 1024  # allocated, not a hole
        assert os.pread(fd, 4096, 1024 * 1024) == bytes(4096)
    finally:
        os.close(fd)
